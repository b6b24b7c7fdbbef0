/* s3_store.c - the S3 gateway's data in the store, as plain elliptics objects:
 *   s3:buckets              the bucket list ("NAME CTIME_NS" lines)
 *   s3:b:BUCKET             a bucket's record
 *   s3:m:BUCKET/KEY         an object's record (s3_meta, text)
 *   s3:d:ID, s3:d:ID:PART   its data (ID fresh per PUT: a record switches atomically)
 *   s3:w:BUCKET             the gateways (node IDs) that write the bucket's index
 *   s3:i:BUCKET:NN:WRITER   shard NN of that writer's part of the index (sorted, binary)
 *   s3:u:ID, s3:p:ID:PART   a multipart upload's record and its parts' size + MD5
 * Read-modify-writes (a writer's own shards, the writer and bucket lists, upload
 * records) hold a stripe lock of this node; no two nodes write the same shard.
 * docs/http.md says what that does and does not cover. */
#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/util.h"
#include "common/log.h"
#include "s3_store.h"

/* dnet_client_set_quorum caps r at the number of copies. */
#define DNET_MAX_COPIES_PUBLIC 16

#define META_MAX (1u << 20)
#define SHARD_MAX (256u << 20)

void s3_shared_init(struct s3_shared *sh)
{
	memset(sh->reg, 0, sizeof(sh->reg));
	pthread_mutex_init(&sh->reg_lock, NULL);
	for (int i = 0; i < S3_STRIPES; i++)
		pthread_mutex_init(&sh->stripes[i], NULL);
}

void s3_shared_destroy(struct s3_shared *sh)
{
	pthread_mutex_destroy(&sh->reg_lock);
	for (int i = 0; i < S3_STRIPES; i++)
		pthread_mutex_destroy(&sh->stripes[i]);
}

int s3_store_open(struct s3_store *st, const char *remote, const char *key,
		  const char *tls_ca, const char *tls_cert, const char *tls_key, const char *writer,
		  struct s3_shared *sh)
{
	st->sh = sh;
	snprintf(st->writer, sizeof(st->writer), "%s", writer);
	dnet_client **cls[2] = {&st->cl, &st->cl2};
	for (int i = 0; i < 2; i++) {
		if (dnet_client_new(cls[i]) != 0 || dnet_client_add_remote(*cls[i], remote) != 0)
			return -1;
		if (key && *key && dnet_client_set_key(*cls[i], key) != 0)
			return -1;
		if (tls_ca && *tls_ca &&
		    dnet_client_set_tls(*cls[i], tls_ca, tls_cert, tls_key) != 0) {
			dnet_log_error("S3 gateway: TLS to the node: %s",
				       dnet_client_tls_error(*cls[i]));
			return -1;
		}
	}
	/* Records, index shards and lists change in place: read every home copy and
	 * take the newest (a copy that missed a write while its node was down must not
	 * be the one answer). Data objects never change once written (a fresh ID per
	 * PUT), so cl2, which reads them, takes the first copy that has them. */
	/* object bodies go out with their Content-Length: one cut short by a corruption
	 * found mid-object is seen as such, so they are verified as they are sent */
	dnet_client_set_stream_verify(st->cl2, 1);
	return dnet_client_set_quorum(st->cl, 0, DNET_MAX_COPIES_PUBLIC) ? -1 : 0;
}

void s3_store_close(struct s3_store *st)
{
	dnet_client_free(st->cl);
	dnet_client_free(st->cl2);
	st->cl = st->cl2 = NULL;
}

static uint32_t fnv(const char *a, size_t al, const char *b, size_t bl)
{
	uint32_t h = 2166136261u;
	for (size_t i = 0; i < al; i++)
		h = (h ^ (uint8_t)a[i]) * 16777619u;
	h = (h ^ 0xff) * 16777619u;
	for (size_t i = 0; i < bl; i++)
		h = (h ^ (uint8_t)b[i]) * 16777619u;
	return h;
}

static pthread_mutex_t *stripe(struct s3_store *st, const char *a, size_t al, const char *b,
			       size_t bl)
{
	return &st->sh->stripes[fnv(a, al, b, bl) % S3_STRIPES];
}

void s3_new_id(char out[33])
{
	uint8_t r[16];
	if (RAND_bytes(r, sizeof(r)) != 1) {
		uint64_t t = dnet_now_real_ns() ^ dnet_now_mono_ns();
		for (int i = 0; i < 16; i++)
			r[i] = (uint8_t)((t >> (8 * (i % 8))) ^ (uint64_t)i * 0x9d);
	}
	s3_md5_hex(r, out);
}

size_t s3_data_key(char *out, size_t cap, const char *id, int part)
{
	int n =
	    part ? snprintf(out, cap, "s3:d:%s:%d", id, part) : snprintf(out, cap, "s3:d:%s", id);
	return n > 0 ? (size_t)n : 0;
}

/* "s3:X:" + a + sep + b into a malloc()ed key. */
static char *mkkey(const char *kind, const char *a, size_t al, const char *sep, const char *b,
		   size_t bl, size_t *len)
{
	size_t kl = strlen(kind), sl = sep ? strlen(sep) : 0;
	char *k = malloc(kl + al + sl + bl + 1);
	if (!k)
		return NULL;
	memcpy(k, kind, kl);
	memcpy(k + kl, a, al);
	if (sl)
		memcpy(k + kl + al, sep, sl);
	if (bl)
		memcpy(k + kl + al + sl, b, bl);
	*len = kl + al + sl + bl;
	k[*len] = 0;
	return k;
}

static int read_small(struct s3_store *st, const char *k, size_t kl, size_t max, char **out,
		      size_t *len)
{
	void *d = NULL;
	size_t l = 0;
	int err = dnet_read(st->cl, k, kl, 0, 0, &d, &l, NULL);
	if (err)
		return err;
	if (l > max) {
		free(d);
		return DNET_ETOOBIG;
	}
	char *p = realloc(d, l + 1);
	if (!p) {
		free(d);
		return DNET_ENOMEM;
	}
	p[l] = 0;
	*out = p;
	*len = l;
	return 0;
}

static void hex_put(struct dnet_hbuf *b, const char *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		dnet_hbuf_add(b, "%02x", (unsigned char)s[i]);
}

static int unhex(const char *s, size_t n, char *out, size_t cap, size_t *ol)
{
	if (n % 2 || n / 2 > cap)
		return -1;
	for (size_t i = 0; i < n / 2; i++) {
		unsigned v;
		if (sscanf(s + 2 * i, "%2x", &v) != 1)
			return -1;
		out[i] = (char)v;
	}
	*ol = n / 2;
	return 0;
}

/* ---- object records ---- */

void s3_meta_free(struct s3_meta *m)
{
	free(m->parts);
	m->parts = NULL;
	m->nparts = 0;
}

static void meta_encode(struct dnet_hbuf *b, const struct s3_meta *m)
{
	dnet_hbuf_add(b, "S3M1\nid %s\nsize %llu\nmtime %llu\netag %s\nctype %s\nmeta ", m->id,
		      (unsigned long long)m->size, (unsigned long long)m->mtime_ns, m->etag,
		      m->ctype);
	hex_put(b, m->umeta, m->umeta_len);
	dnet_hbuf_add(b, "\nparts %d\n", m->nparts);
	for (int i = 0; i < m->nparts; i++)
		dnet_hbuf_add(b, "p %d %llu\n", m->parts[i].num,
			      (unsigned long long)m->parts[i].size);
}

/* Parse "name value" lines; unknown names are skipped (forward compatible). */
static int meta_decode(const char *p, size_t n, struct s3_meta *m)
{
	memset(m, 0, sizeof(*m));
	if (n < 5 || (memcmp(p, "S3M1\n", 5) && memcmp(p, "S3U1\n", 5)))
		return DNET_ECORRUPT;
	int np = 0;
	for (size_t i = 5; i < n;) {
		size_t j = i;
		while (j < n && p[j] != '\n')
			j++;
		const char *l = p + i, *sp = memchr(l, ' ', j - i);
		size_t ll = j - i;
		i = j + 1;
		if (!sp)
			continue;
		size_t nl = (size_t)(sp - l), vl = ll - nl - 1;
		const char *v = sp + 1;
		char num[32];
		if (vl < sizeof(num)) {
			memcpy(num, v, vl);
			num[vl] = 0;
		} else {
			num[0] = 0;
		}
#define IS(s) (nl == strlen(s) && !memcmp(l, s, nl))
		if (IS("id") && vl == 32) {
			memcpy(m->id, v, 32);
			m->id[32] = 0;
		} else if (IS("size")) {
			m->size = strtoull(num, NULL, 10);
		} else if (IS("mtime")) {
			m->mtime_ns = strtoull(num, NULL, 10);
		} else if (IS("etag") && vl < sizeof(m->etag)) {
			memcpy(m->etag, v, vl);
			m->etag[vl] = 0;
		} else if (IS("ctype") && vl < sizeof(m->ctype)) {
			memcpy(m->ctype, v, vl);
			m->ctype[vl] = 0;
		} else if (IS("meta")) {
			if (unhex(v, vl, m->umeta, sizeof(m->umeta), &m->umeta_len) != 0)
				goto bad;
		} else if (IS("parts")) {
			long c = strtol(num, NULL, 10);
			if (c < 0 || c > S3_MAX_PARTS || m->parts)
				goto bad;
			if (c) {
				m->parts = calloc((size_t)c, sizeof(*m->parts));
				if (!m->parts)
					return DNET_ENOMEM;
			}
			m->nparts = (int)c;
		} else if (IS("p")) {
			int pn;
			unsigned long long ps;
			if (np >= m->nparts || sscanf(num, "%d %llu", &pn, &ps) != 2)
				goto bad;
			m->parts[np].num = pn;
			m->parts[np].size = ps;
			np++;
		}
#undef IS
	}
	if (np != m->nparts)
		goto bad;
	return 0;
bad:
	s3_meta_free(m);
	return DNET_ECORRUPT;
}

int s3_meta_read(struct s3_store *st, const char *b, size_t bl, const char *k, size_t kl,
		 struct s3_meta *m)
{
	size_t mkl;
	char *mk = mkkey("s3:m:", b, bl, "/", k, kl, &mkl);
	if (!mk)
		return DNET_ENOMEM;
	char *t;
	size_t tl;
	int err = read_small(st, mk, mkl, META_MAX, &t, &tl);
	free(mk);
	if (err)
		return err;
	err = meta_decode(t, tl, m);
	free(t);
	return err;
}

void s3_data_remove(struct s3_store *st, const struct s3_meta *m)
{
	char dk[80];
	if (!m->nparts) {
		size_t l = s3_data_key(dk, sizeof(dk), m->id, 0);
		dnet_remove(st->cl, dk, l);
	}
	for (int i = 0; i < m->nparts; i++) {
		size_t l = s3_data_key(dk, sizeof(dk), m->id, m->parts[i].num);
		dnet_remove(st->cl, dk, l);
	}
}

/* ---- the name index ----
 * Every gateway (node) writes only shards of its own, s3:i:BUCKET:NN:WRITER (WRITER:
 * the first 8 bytes of its node ID in hex), so two nodes never read-modify-write
 * the same object. A delete writes a tombstone. A listing reads the shards of
 * every writer named in s3:w:BUCKET and keeps the newest record of each name. */

#define WRITERS_MAX 1024
#define REG_TTL_NS (10ull * 1000000000ull)

static void put_u64(struct dnet_hbuf *b, uint64_t v)
{
	char x[8];
	for (int i = 0; i < 8; i++)
		x[i] = (char)(v >> (8 * i));
	dnet_hbuf_put(b, x, 8);
}

/* dead: a tombstone (etag length byte 255, no etag). */
static void put_entry(struct dnet_hbuf *b, const char *k, size_t kl, uint64_t size, uint64_t mt,
		      const char *etag, size_t el, int dead)
{
	char x[2] = {(char)(kl & 0xff), (char)(kl >> 8)};
	dnet_hbuf_put(b, x, 2);
	dnet_hbuf_put(b, k, kl);
	put_u64(b, size);
	put_u64(b, mt);
	char e = (char)(dead ? 255 : el);
	dnet_hbuf_put(b, &e, 1);
	if (!dead)
		dnet_hbuf_put(b, etag, el);
}

static int keycmp(const char *a, size_t al, const char *b, size_t bl)
{
	int c = memcmp(a, b, al < bl ? al : bl);
	if (c)
		return c;
	return al < bl ? -1 : al > bl ? 1 : 0;
}

static int shard_of(const char *k, size_t kl)
{
	return (int)(fnv(k, kl, "", 0) % S3_SHARDS);
}

static size_t shard_key(char *out, size_t cap, const char *b, size_t bl, int shard,
			const char *writer)
{
	int n = snprintf(out, cap, "s3:i:%.*s:%02d:%s", (int)bl, b, shard, writer);
	return n > 0 ? (size_t)n : 0;
}

static size_t writers_key(char *out, size_t cap, const char *b, size_t bl)
{
	int n = snprintf(out, cap, "s3:w:%.*s", (int)bl, b);
	return n > 0 ? (size_t)n : 0;
}

/* The writers of a bucket: lines of 16 hex digits. */
static int writers_parse(const char *t, size_t tl, char (*w)[17], int max)
{
	int n = 0;
	for (size_t i = 0; i + 17 <= tl && n < max; i += 17) {
		if (t[i + 16] != '\n')
			break;
		memcpy(w[n], t + i, 16);
		w[n][16] = 0;
		n++;
	}
	return n;
}

static int writers_has(const char *t, size_t tl, const char *me)
{
	for (size_t i = 0; i + 17 <= tl; i += 17)
		if (!memcmp(t + i, me, 16))
			return 1;
	return 0;
}

/* Make sure this gateway is listed among the bucket's writers before it writes a
 * shard. The list is read back after each change (another node may have
 * replaced it with a list without us), and checked again every 10 s, so a lost
 * registration heals itself. */
static int writer_register(struct s3_store *st, const char *b, size_t bl)
{
	struct s3_shared *sh = st->sh;
	uint32_t slot = fnv(b, bl, "", 0) % S3_REG_SLOTS;
	uint64_t now = dnet_now_mono_ns();
	pthread_mutex_lock(&sh->reg_lock);
	int fresh = sh->reg[slot].len == bl && !memcmp(sh->reg[slot].bucket, b, bl) &&
		    now - sh->reg[slot].ok_ns < REG_TTL_NS;
	pthread_mutex_unlock(&sh->reg_lock);
	if (fresh)
		return 0;
	char wk[96];
	size_t wkl = writers_key(wk, sizeof(wk), b, bl);
	pthread_mutex_t *lk = stripe(st, wk, wkl, "", 0);
	for (int attempt = 0; attempt < 8; attempt++) {
		char *t = NULL;
		size_t tl = 0;
		pthread_mutex_lock(lk);
		int err = read_small(st, wk, wkl, META_MAX, &t, &tl);
		if (err == DNET_ENOENT) {
			err = 0;
			tl = 0;
		}
		int listed = !err && writers_has(t, tl, st->writer);
		if (!err && !listed) {
			char *nt = realloc(t, tl + 18);
			if (!nt) {
				err = DNET_ENOMEM;
			} else {
				t = nt;
				memcpy(t + tl, st->writer, 16);
				t[tl + 16] = '\n';
				err = dnet_write(st->cl, wk, wkl, t, tl + 17, NULL);
			}
		}
		pthread_mutex_unlock(lk);
		free(t);
		if (err)
			return err;
		if (listed) {
			pthread_mutex_lock(&sh->reg_lock);
			memcpy(sh->reg[slot].bucket, b, bl);
			sh->reg[slot].len = bl;
			sh->reg[slot].ok_ns = now;
			pthread_mutex_unlock(&sh->reg_lock);
			return 0;
		}
		struct timespec ts = {0, (long)(1000000 + (fnv(st->writer, 16, "", 0) % 4000000))};
		nanosleep(&ts, NULL);
	}
	return DNET_EBUSY;
}

/* Record key k in this gateway's shard: an entry (m) or a tombstone (m NULL). */
static int index_update(struct s3_store *st, const char *b, size_t bl, const char *k, size_t kl,
			const struct s3_meta *m)
{
	int err = writer_register(st, b, bl);
	if (err)
		return err;
	uint64_t mt = m ? m->mtime_ns : dnet_now_real_ns();
	uint64_t size = m ? m->size : 0;
	const char *etag = m ? m->etag : "";
	size_t el = strlen(etag);
	char sk[128];
	size_t skl = shard_key(sk, sizeof(sk), b, bl, shard_of(k, kl), st->writer);
	pthread_mutex_t *lk = stripe(st, sk, skl, "", 0);
	pthread_mutex_lock(lk);
	void *old = NULL;
	size_t ol = 0;
	err = dnet_read(st->cl, sk, skl, 0, 0, &old, &ol, NULL);
	if (err == DNET_ENOENT) {
		err = 0;
		ol = 0;
	}
	struct s3_entry *e = NULL;
	int n = 0;
	if (!err && ol > SHARD_MAX)
		err = DNET_ETOOBIG;
	if (!err)
		err = s3_shard_parse(old, ol, &e, &n);
	if (err) {
		pthread_mutex_unlock(lk);
		free(old);
		return err;
	}
	struct dnet_hbuf nb;
	dnet_hbuf_init(&nb, ol + kl + 128);
	dnet_hbuf_put(&nb, "S3I1", 4);
	int done = 0;
	for (int i = 0; i < n; i++) {
		int c = keycmp(e[i].key, e[i].klen, k, kl);
		if (c >= 0 && !done) {
			put_entry(&nb, k, kl, size, mt, etag, el, !m);
			done = 1;
		}
		if (c == 0)
			continue;
		put_entry(&nb, e[i].key, e[i].klen, e[i].size, e[i].mtime_ns, e[i].etag, e[i].elen,
			  e[i].dead);
	}
	if (!done)
		put_entry(&nb, k, kl, size, mt, etag, el, !m);
	free(e);
	free(old);
	err = nb.p ? dnet_write(st->cl, sk, skl, nb.p, nb.len, NULL) : DNET_ENOMEM;
	pthread_mutex_unlock(lk);
	free(nb.p);
	return err;
}

/* Drop records of this gateway's shard that a listing found useless: entries
 * and tombstones superseded by a newer record of another writer, and tombstones
 * that hide nothing. Only records still exactly as seen are dropped. */
static void index_gc(struct s3_store *st, const char *b, size_t bl, int shard,
		     const struct s3_entry *drop, int ndrop)
{
	char sk[128];
	size_t skl = shard_key(sk, sizeof(sk), b, bl, shard, st->writer);
	pthread_mutex_t *lk = stripe(st, sk, skl, "", 0);
	pthread_mutex_lock(lk);
	void *old = NULL;
	size_t ol = 0;
	struct s3_entry *e = NULL;
	int n = 0;
	if (dnet_read(st->cl, sk, skl, 0, 0, &old, &ol, NULL) == 0 && ol <= SHARD_MAX &&
	    s3_shard_parse(old, ol, &e, &n) == 0) {
		struct dnet_hbuf nb;
		dnet_hbuf_init(&nb, ol + 16);
		dnet_hbuf_put(&nb, "S3I1", 4);
		int dropped = 0;
		for (int i = 0; i < n; i++) {
			int gone = 0;
			for (int j = 0; j < ndrop && !gone; j++)
				gone = drop[j].mtime_ns == e[i].mtime_ns &&
				       drop[j].dead == e[i].dead &&
				       !keycmp(drop[j].key, drop[j].klen, e[i].key, e[i].klen);
			if (gone) {
				dropped++;
				continue;
			}
			put_entry(&nb, e[i].key, e[i].klen, e[i].size, e[i].mtime_ns, e[i].etag,
				  e[i].elen, e[i].dead);
		}
		if (dropped && nb.p)
			dnet_write(st->cl, sk, skl, nb.p, nb.len, NULL);
		free(nb.p);
	}
	pthread_mutex_unlock(lk);
	free(e);
	free(old);
}

int s3_object_commit(struct s3_store *st, const char *b, size_t bl, const char *k, size_t kl,
		     const struct s3_meta *m)
{
	struct s3_meta old;
	int have_old = s3_meta_read(st, b, bl, k, kl, &old) == 0;
	struct dnet_hbuf mb;
	dnet_hbuf_init(&mb, 512 + (size_t)m->nparts * 32);
	meta_encode(&mb, m);
	size_t mkl;
	char *mk = mkkey("s3:m:", b, bl, "/", k, kl, &mkl);
	int err = !mb.p || !mk ? DNET_ENOMEM : dnet_write(st->cl, mk, mkl, mb.p, mb.len, NULL);
	free(mb.p);
	free(mk);
	if (!err)
		err = index_update(st, b, bl, k, kl, m);
	if (have_old) {
		if (!err && strcmp(old.id, m->id))
			s3_data_remove(st, &old);
		s3_meta_free(&old);
	}
	return err;
}

int s3_object_delete(struct s3_store *st, const char *b, size_t bl, const char *k, size_t kl)
{
	struct s3_meta old;
	int err = s3_meta_read(st, b, bl, k, kl, &old);
	if (err && err != DNET_ENOENT)
		return err;
	int had = !err;
	size_t mkl;
	char *mk = mkkey("s3:m:", b, bl, "/", k, kl, &mkl);
	if (!mk) {
		if (had)
			s3_meta_free(&old);
		return DNET_ENOMEM;
	}
	if (had) {
		err = dnet_remove(st->cl, mk, mkl);
		if (err == DNET_ENOENT)
			err = 0;
	}
	free(mk);
	/* The name leaves the index even if the record was already gone. */
	if (!err)
		err = index_update(st, b, bl, k, kl, NULL);
	if (had) {
		if (!err)
			s3_data_remove(st, &old);
		s3_meta_free(&old);
	}
	return err ? err : had ? 0 : DNET_ENOENT;
}

/* ---- buckets ---- */

int s3_bucket_exists(struct s3_store *st, const char *b, size_t bl)
{
	size_t kl;
	char *k = mkkey("s3:b:", b, bl, NULL, NULL, 0, &kl);
	if (!k)
		return DNET_ENOMEM;
	struct dnet_object_info info;
	int err = dnet_lookup(st->cl, k, kl, &info);
	free(k);
	return err;
}

/* Add (add=1) or remove a line of s3:buckets. */
static int bucket_list_update(struct s3_store *st, const char *b, size_t bl, int add)
{
	pthread_mutex_t *lk = stripe(st, "s3:buckets", 10, "", 0);
	pthread_mutex_lock(lk);
	char *t = NULL;
	size_t tl = 0;
	int err = read_small(st, "s3:buckets", 10, META_MAX, &t, &tl);
	if (err == DNET_ENOENT)
		err = 0;
	struct dnet_hbuf nb;
	dnet_hbuf_init(&nb, tl + bl + 64);
	int found = 0, placed = 0;
	for (size_t i = 0; !err && i < tl;) {
		size_t j = i;
		while (j < tl && t[j] != '\n')
			j++;
		const char *sp = memchr(t + i, ' ', j - i);
		size_t nl = sp ? (size_t)(sp - t - i) : j - i;
		int c = keycmp(t + i, nl, b, bl);
		if (c == 0)
			found = 1;
		if (add && !placed && c > 0) {
			dnet_hbuf_put(&nb, b, bl);
			dnet_hbuf_add(&nb, " %llu\n", (unsigned long long)dnet_now_real_ns());
			placed = 1;
		}
		if (c != 0 || add) {
			dnet_hbuf_put(&nb, t + i, j - i);
			dnet_hbuf_put(&nb, "\n", 1);
			if (c == 0)
				placed = 1;
		}
		i = j + 1;
	}
	if (!err && add && !placed) {
		dnet_hbuf_put(&nb, b, bl);
		dnet_hbuf_add(&nb, " %llu\n", (unsigned long long)dnet_now_real_ns());
	}
	if (!err && !nb.p)
		err = DNET_ENOMEM;
	if (!err && (add ? !found : found))
		err = dnet_write(st->cl, "s3:buckets", 10, nb.p, nb.len, NULL);
	pthread_mutex_unlock(lk);
	free(t);
	free(nb.p);
	return err;
}

int s3_bucket_create(struct s3_store *st, const char *b, size_t bl)
{
	int err = s3_bucket_exists(st, b, bl);
	if (err == 0)
		return DNET_EEXIST;
	if (err != DNET_ENOENT)
		return err;
	size_t kl;
	char *k = mkkey("s3:b:", b, bl, NULL, NULL, 0, &kl);
	if (!k)
		return DNET_ENOMEM;
	char rec[64];
	int rl = snprintf(rec, sizeof(rec), "S3B1 %llu\n", (unsigned long long)dnet_now_real_ns());
	err = dnet_write(st->cl, k, kl, rec, (size_t)rl, NULL);
	free(k);
	return err ? err : bucket_list_update(st, b, bl, 1);
}

int s3_bucket_delete(struct s3_store *st, const char *b, size_t bl)
{
	int err = s3_bucket_exists(st, b, bl);
	if (err)
		return err;
	struct s3_listing ls;
	err = s3_list(st, b, bl, "", 0, NULL, 0, NULL, 0, 1, &ls);
	if (err)
		return err;
	int nonempty = ls.n > 0;
	/* Remove every writer's shards, then the writer list. */
	for (int w = 0; !nonempty && w < ls.nwriters; w++)
		for (int sh = 0; sh < S3_SHARDS; sh++) {
			char sk[128];
			size_t skl = shard_key(sk, sizeof(sk), b, bl, sh, ls.writers[w]);
			dnet_remove(st->cl, sk, skl);
		}
	s3_listing_free(&ls);
	if (nonempty)
		return S3_ENOTEMPTY;
	char wk[96];
	size_t wkl = writers_key(wk, sizeof(wk), b, bl);
	dnet_remove(st->cl, wk, wkl);
	pthread_mutex_lock(&st->sh->reg_lock);
	for (int i = 0; i < S3_REG_SLOTS; i++)
		if (st->sh->reg[i].len == bl && !memcmp(st->sh->reg[i].bucket, b, bl))
			st->sh->reg[i].len = 0;
	pthread_mutex_unlock(&st->sh->reg_lock);
	size_t kl;
	char *k = mkkey("s3:b:", b, bl, NULL, NULL, 0, &kl);
	if (!k)
		return DNET_ENOMEM;
	err = dnet_remove(st->cl, k, kl);
	free(k);
	if (err && err != DNET_ENOENT)
		return err;
	return bucket_list_update(st, b, bl, 0);
}

int s3_bucket_list(struct s3_store *st, char **text, size_t *len)
{
	int err = read_small(st, "s3:buckets", 10, META_MAX, text, len);
	if (err == DNET_ENOENT) {
		*text = NULL;
		*len = 0;
		return 0;
	}
	return err;
}

/* ---- listing ---- */

/* By name, then newest first (a live entry before a tombstone of the same time). */
static int entry_cmp(const void *a, const void *b)
{
	const struct s3_entry *x = a, *y = b;
	int c = keycmp(x->key, x->klen, y->key, y->klen);
	if (c)
		return c;
	if (x->mtime_ns != y->mtime_ns)
		return x->mtime_ns > y->mtime_ns ? -1 : 1;
	return x->dead - y->dead;
}

void s3_listing_free(struct s3_listing *ls)
{
	free(ls->all);
	free(ls->e);
	free(ls->prefixes);
	for (int i = 0; i < ls->nbufs; i++)
		free(ls->bufs[i]);
	free(ls->bufs);
	free(ls->writers);
	memset(ls, 0, sizeof(*ls));
}

/* Find what this gateway's shards hold in vain (see index_gc) and drop it. */
static void list_gc(struct s3_store *st, const char *b, size_t bl, struct s3_listing *ls,
		    size_t total, int me)
{
	struct s3_entry *drop = NULL;
	int *shard = NULL, nd = 0;
	for (size_t i = 0; i < total;) {
		size_t j = i + 1;
		int live_other = 0;
		while (j < total &&
		       !keycmp(ls->all[j].key, ls->all[j].klen, ls->all[i].key, ls->all[i].klen))
			j++;
		for (size_t x = i; x < j; x++)
			if (!ls->all[x].dead && ls->all[x].writer != me)
				live_other = 1;
		for (size_t x = i; x < j; x++) {
			const struct s3_entry *e = &ls->all[x];
			if (e->writer != me)
				continue;
			/* superseded, or a newest tombstone with nothing older to hide */
			int useless = x > i || (e->dead && !live_other);
			if (!useless)
				continue;
			if (!(nd & (nd + 1))) {
				size_t cap = (size_t)(nd + 1) * 2;
				struct s3_entry *nd2 = realloc(drop, cap * sizeof(*drop));
				int *ns = realloc(shard, cap * sizeof(*shard));
				if (nd2)
					drop = nd2;
				if (ns)
					shard = ns;
				if (!nd2 || !ns)
					goto out;
			}
			drop[nd] = *e;
			shard[nd++] = shard_of(e->key, e->klen);
		}
		i = j;
	}
	for (int sh = 0; sh < S3_SHARDS; sh++) {
		struct s3_entry *mine = NULL;
		int nm = 0;
		for (int x = 0; x < nd; x++)
			if (shard[x] == sh)
				nm++;
		if (!nm || !(mine = malloc(sizeof(*mine) * (size_t)nm)))
			continue;
		nm = 0;
		for (int x = 0; x < nd; x++)
			if (shard[x] == sh)
				mine[nm++] = drop[x];
		index_gc(st, b, bl, sh, mine, nm);
		free(mine);
	}
out:
	free(drop);
	free(shard);
}

int s3_list(struct s3_store *st, const char *b, size_t bl, const char *prefix, size_t pl,
	    const char *delim, size_t dl, const char *start, size_t sl, int max,
	    struct s3_listing *ls)
{
	memset(ls, 0, sizeof(*ls));
	size_t total = 0, cap = 0;
	char wk[96], *wt = NULL;
	size_t wkl = writers_key(wk, sizeof(wk), b, bl), wtl = 0;
	int err = read_small(st, wk, wkl, META_MAX, &wt, &wtl);
	if (err == DNET_ENOENT) {
		err = 0;
		wtl = 0;
	}
	if (err)
		return err;
	ls->writers = malloc(sizeof(*ls->writers) * WRITERS_MAX);
	if (!ls->writers) {
		free(wt);
		return DNET_ENOMEM;
	}
	ls->nwriters = writers_parse(wt, wtl, ls->writers, WRITERS_MAX);
	free(wt);
	ls->bufs = calloc((size_t)ls->nwriters * S3_SHARDS + 1, sizeof(*ls->bufs));
	if (!ls->bufs) {
		s3_listing_free(ls);
		return DNET_ENOMEM;
	}
	int me = -1;
	for (int w = 0; w < ls->nwriters && !err; w++) {
		if (!strcmp(ls->writers[w], st->writer))
			me = w;
		for (int sh = 0; sh < S3_SHARDS && !err; sh++) {
			char sk[128];
			size_t skl = shard_key(sk, sizeof(sk), b, bl, sh, ls->writers[w]), n = 0;
			void **buf = &ls->bufs[ls->nbufs];
			err = dnet_read(st->cl, sk, skl, 0, 0, buf, &n, NULL);
			if (err == DNET_ENOENT) {
				err = 0;
				continue;
			}
			if (err)
				break;
			ls->nbufs++;
			struct s3_entry *e;
			int c;
			err = n > SHARD_MAX ? DNET_ETOOBIG : s3_shard_parse(*buf, n, &e, &c);
			if (err)
				break;
			for (int i = 0; i < c; i++) {
				if (e[i].klen < pl || memcmp(e[i].key, prefix, pl))
					continue;
				if (sl && keycmp(e[i].key, e[i].klen, start, sl) <= 0)
					continue;
				if (total == cap) {
					cap = cap ? cap * 2 : 256;
					struct s3_entry *na = realloc(ls->all, cap * sizeof(*na));
					if (!na) {
						err = DNET_ENOMEM;
						break;
					}
					ls->all = na;
				}
				e[i].writer = w;
				ls->all[total++] = e[i];
			}
			free(e);
		}
	}
	if (err) {
		s3_listing_free(ls);
		return err;
	}
	if (total)
		qsort(ls->all, total, sizeof(*ls->all), entry_cmp);
	if (me >= 0)
		list_gc(st, b, bl, ls, total, me);
	ls->e = calloc((size_t)max + 1, sizeof(*ls->e));
	ls->prefixes = calloc((size_t)max + 1, sizeof(*ls->prefixes));
	if (!ls->e || !ls->prefixes) {
		s3_listing_free(ls);
		return DNET_ENOMEM;
	}
	int emitted = 0;
	for (size_t i = 0; i < total; i++) {
		const struct s3_entry *e = &ls->all[i];
		/* the newest record of each name decides; a tombstone hides it */
		if (i && !keycmp(e->key, e->klen, ls->all[i - 1].key, ls->all[i - 1].klen))
			continue;
		if (e->dead)
			continue;
		const char *cp = NULL;
		size_t cpl = 0;
		if (dl && e->klen > pl) {
			const char *r = e->key + pl;
			size_t rl = e->klen - pl;
			for (size_t x = 0; x + dl <= rl; x++)
				if (!memcmp(r + x, delim, dl)) {
					cp = e->key;
					cpl = pl + x + dl;
					break;
				}
		}
		if (cp) {
			/* A group already listed (on this page or, via start, an earlier one). */
			if (ls->nprefixes && ls->prefixes[ls->nprefixes - 1].len == cpl &&
			    !memcmp(ls->prefixes[ls->nprefixes - 1].p, cp, cpl))
				continue;
			if (sl && keycmp(cp, cpl, start, sl) <= 0)
				continue;
		}
		if (emitted == max) {
			ls->truncated = 1;
			break;
		}
		if (cp) {
			ls->prefixes[ls->nprefixes].p = cp;
			ls->prefixes[ls->nprefixes++].len = cpl;
			memcpy(ls->last, cp, cpl);
			ls->last_len = cpl;
		} else {
			ls->e[ls->n++] = *e;
			memcpy(ls->last, e->key, e->klen);
			ls->last_len = e->klen;
		}
		emitted++;
	}
	return 0;
}

/* ---- multipart uploads ---- */

int s3_upload_create(struct s3_store *st, const char *id, const char *b, size_t bl, const char *k,
		     size_t kl, const struct s3_meta *m)
{
	struct dnet_hbuf r;
	dnet_hbuf_init(&r, 512 + 2 * kl);
	dnet_hbuf_add(&r, "S3U1\nbucket ");
	hex_put(&r, b, bl);
	dnet_hbuf_add(&r, "\nkey ");
	hex_put(&r, k, kl);
	dnet_hbuf_add(&r, "\nctype %s\nmeta ", m->ctype);
	hex_put(&r, m->umeta, m->umeta_len);
	dnet_hbuf_add(&r, "\n");
	char uk[64];
	int ukl = snprintf(uk, sizeof(uk), "s3:u:%s", id);
	int err = r.p ? dnet_write(st->cl, uk, (size_t)ukl, r.p, r.len, NULL) : DNET_ENOMEM;
	free(r.p);
	return err;
}

/* The record, its bucket and key checked; *pn (if given) receives the part
 * numbers listed in it (malloc()ed). */
static int upload_load(struct s3_store *st, const char *id, const char *b, size_t bl, const char *k,
		       size_t kl, struct s3_meta *m, int **pn, int *npn)
{
	char uk[64];
	int ukl = snprintf(uk, sizeof(uk), "s3:u:%s", id);
	char *t;
	size_t tl;
	int err = read_small(st, uk, (size_t)ukl, META_MAX, &t, &tl);
	if (err)
		return err;
	err = meta_decode(t, tl, m);
	if (err) {
		free(t);
		return err;
	}
	int ok = !b;
	int cap = 0, n = 0;
	int *nums = NULL;
	for (size_t i = 5; i < tl;) {
		size_t j = i;
		while (j < tl && t[j] != '\n')
			j++;
		char dec[S3_MAX_KEY + 1];
		size_t dl;
		if (b && j - i > 7 && !memcmp(t + i, "bucket ", 7)) {
			if (unhex(t + i + 7, j - i - 7, dec, sizeof(dec), &dl) || dl != bl ||
			    memcmp(dec, b, bl))
				ok = -1;
		} else if (b && j - i > 4 && !memcmp(t + i, "key ", 4)) {
			if (unhex(t + i + 4, j - i - 4, dec, sizeof(dec), &dl) || dl != kl ||
			    memcmp(dec, k, kl))
				ok = -1;
			else if (ok == 0)
				ok = 1;
		} else if (pn && j - i > 5 && !memcmp(t + i, "part ", 5)) {
			if (n == cap) {
				cap = cap ? cap * 2 : 16;
				int *nn = realloc(nums, sizeof(int) * (size_t)cap);
				if (!nn) {
					free(nums);
					free(t);
					s3_meta_free(m);
					return DNET_ENOMEM;
				}
				nums = nn;
			}
			nums[n++] = atoi(t + i + 5);
		}
		i = j + 1;
	}
	free(t);
	if (ok != 1) {
		free(nums);
		s3_meta_free(m);
		return DNET_ENOENT;
	}
	if (pn) {
		*pn = nums;
		*npn = n;
	} else {
		free(nums);
	}
	return 0;
}

int s3_upload_read(struct s3_store *st, const char *id, const char *b, size_t bl, const char *k,
		   size_t kl, struct s3_meta *m)
{
	return upload_load(st, id, b, bl, k, kl, m, NULL, NULL);
}

int s3_part_record(struct s3_store *st, const char *id, int n, uint64_t size, const char *md5)
{
	char pk[80], rec[96];
	int pkl = snprintf(pk, sizeof(pk), "s3:p:%s:%d", id, n);
	int rl = snprintf(rec, sizeof(rec), "%llu %s\n", (unsigned long long)size, md5);
	int err = dnet_write(st->cl, pk, (size_t)pkl, rec, (size_t)rl, NULL);
	if (err)
		return err;
	/* The upload's record lists the part numbers, so abort can find them all. */
	char uk[64];
	int ukl = snprintf(uk, sizeof(uk), "s3:u:%s", id);
	pthread_mutex_t *lk = stripe(st, uk, (size_t)ukl, "", 0);
	pthread_mutex_lock(lk);
	char *t;
	size_t tl;
	err = read_small(st, uk, (size_t)ukl, META_MAX, &t, &tl);
	if (!err) {
		char line[32];
		int ll = snprintf(line, sizeof(line), "\npart %d\n", n);
		int have = 0;
		/* "part N" lines follow the record's first line */
		for (char *p = t; (p = memmem(p, tl - (size_t)(p - t), line, (size_t)ll)) != NULL;
		     p++)
			have = 1;
		if (!have) {
			char *nt = realloc(t, tl + (size_t)ll + 1);
			if (!nt) {
				err = DNET_ENOMEM;
			} else {
				t = nt;
				memcpy(t + tl, line + 1, (size_t)ll - 1);
				err = dnet_write(st->cl, uk, (size_t)ukl, t, tl + (size_t)ll - 1,
						 NULL);
			}
		}
		free(t);
	}
	pthread_mutex_unlock(lk);
	return err;
}

int s3_part_read(struct s3_store *st, const char *id, int n, uint64_t *size, char md5[33])
{
	char pk[80];
	int pkl = snprintf(pk, sizeof(pk), "s3:p:%s:%d", id, n);
	char *t;
	size_t tl;
	int err = read_small(st, pk, (size_t)pkl, 256, &t, &tl);
	if (err)
		return err;
	unsigned long long s;
	char h[40];
	if (sscanf(t, "%llu %39s", &s, h) != 2 || strlen(h) != 32) {
		free(t);
		return DNET_ECORRUPT;
	}
	free(t);
	*size = s;
	memcpy(md5, h, 33);
	return 0;
}

void s3_upload_finish(struct s3_store *st, const char *id, const struct s3_meta *m)
{
	struct s3_meta um;
	int *nums = NULL, n = 0;
	if (upload_load(st, id, NULL, 0, NULL, 0, &um, &nums, &n) != 0)
		return;
	s3_meta_free(&um);
	char k[80];
	for (int i = 0; i < n; i++) {
		int used = 0;
		for (int j = 0; m && j < m->nparts && !used; j++)
			used = m->parts[j].num == nums[i];
		int kl = snprintf(k, sizeof(k), "s3:p:%s:%d", id, nums[i]);
		dnet_remove(st->cl, k, (size_t)kl);
		if (!used) {
			size_t dl = s3_data_key(k, sizeof(k), id, nums[i]);
			dnet_remove(st->cl, k, dl);
		}
	}
	free(nums);
	int kl = snprintf(k, sizeof(k), "s3:u:%s", id);
	dnet_remove(st->cl, k, (size_t)kl);
}
