/* s3_store.h - how the S3 gateway keeps buckets, objects, the per-bucket name index
 * and multipart uploads as elliptics objects (layout in docs/http.md). Every call
 * goes through the worker's client handles, so it works on any ring, with copies. */
#ifndef DNET_S3_STORE_H
#define DNET_S3_STORE_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "elliptics/elliptics.h"
#include "s3.h"

#define S3_ENOTEMPTY (-1000)
#define S3_EBADDIGEST (-1001)
#define S3_SHARDS 16
#define S3_STRIPES 64

/* Locks shared by the gateway's threads: read-modify-writes of one index shard,
 * the bucket list, or one upload's record are serialized within this node. */
#define S3_REG_SLOTS 256
struct s3_shared {
	pthread_mutex_t stripes[S3_STRIPES];
	/* Buckets whose writer list was seen to hold this gateway, and when. */
	pthread_mutex_t reg_lock;
	struct {
		char bucket[S3_MAX_BUCKET + 1];
		size_t len;
		uint64_t ok_ns;
	} reg[S3_REG_SLOTS];
};
void s3_shared_init(struct s3_shared *sh);
void s3_shared_destroy(struct s3_shared *sh);

struct s3_store {
	dnet_client *cl, *cl2; /* cl: records, index (every copy read); cl2: object data */
	struct s3_shared *sh;
	char writer[17]; /* this gateway's name in the index: its node ID, 16 hex */
};
/* tls_ca (NULL or empty: plaintext): the node's port speaks TLS; the gateway
 * verifies it against tls_ca and shows tls_cert/tls_key if asked. */
int s3_store_open(struct s3_store *st, const char *remote, const char *key,
		  const char *tls_ca, const char *tls_cert, const char *tls_key, const char *writer,
		  struct s3_shared *sh);
void s3_store_close(struct s3_store *st);

struct s3_part_ref {
	int num;
	uint64_t size;
};

/* An object's record. */
struct s3_meta {
	char id[33]; /* its data: s3:d:<id> (or s3:d:<id>:<part>) */
	uint64_t size, mtime_ns;
	char etag[48];
	char ctype[256];
	char umeta[2048]; /* "x-amz-meta-name: value\r\n" lines */
	size_t umeta_len;
	int nparts; /* 0: one data object */
	struct s3_part_ref *parts;
};
void s3_meta_free(struct s3_meta *m);
void s3_new_id(char out[33]);
size_t s3_data_key(char *out, size_t cap, const char *id, int part);

int s3_bucket_exists(struct s3_store *st, const char *b, size_t bl);
int s3_bucket_create(struct s3_store *st, const char *b, size_t bl);
int s3_bucket_delete(struct s3_store *st, const char *b, size_t bl);
/* "NAME CTIME_NS\n" lines, malloc()ed. */
int s3_bucket_list(struct s3_store *st, char **text, size_t *len);

int s3_meta_read(struct s3_store *st, const char *b, size_t bl, const char *k, size_t kl,
		 struct s3_meta *m);
/* Make m the object's record (its data already stored), index the name, drop the
 * data of the object it replaces. */
int s3_object_commit(struct s3_store *st, const char *b, size_t bl, const char *k, size_t kl,
		     const struct s3_meta *m);
void s3_data_remove(struct s3_store *st, const struct s3_meta *m);
int s3_object_delete(struct s3_store *st, const char *b, size_t bl, const char *k, size_t kl);

int s3_upload_create(struct s3_store *st, const char *id, const char *b, size_t bl, const char *k,
		     size_t kl, const struct s3_meta *m);
int s3_upload_read(struct s3_store *st, const char *id, const char *b, size_t bl, const char *k,
		   size_t kl, struct s3_meta *m);
int s3_part_record(struct s3_store *st, const char *id, int n, uint64_t size, const char *md5);
int s3_part_read(struct s3_store *st, const char *id, int n, uint64_t *size, char md5[33]);
/* Drop an upload's records and the parts m does not use (m NULL: abort, all). */
void s3_upload_finish(struct s3_store *st, const char *id, const struct s3_meta *m);

struct s3_entry {
	const char *key, *etag;
	size_t klen, elen;
	uint64_t size, mtime_ns;
	int dead;   /* a tombstone: the name was deleted at mtime_ns */
	int writer; /* s3_list: which writer's shard it came from */
};
struct s3_prefix {
	const char *p;
	size_t len;
};
struct s3_listing {
	struct s3_entry *e;
	int n;
	struct s3_prefix *prefixes;
	int nprefixes;
	int truncated;
	char last[S3_MAX_KEY + 1];
	size_t last_len;
	struct s3_entry *all;
	void **bufs;
	int nbufs;
	char (*writers)[17];
	int nwriters;
};
/* One page of the bucket's names in order: those with prefix, after start,
 * grouped by delimiter (dl 0: none), at most max entries and prefixes. */
int s3_list(struct s3_store *st, const char *b, size_t bl, const char *prefix, size_t pl,
	    const char *delim, size_t dl, const char *start, size_t sl, int max,
	    struct s3_listing *ls);
void s3_listing_free(struct s3_listing *ls);

/* Index shards (s3_parse.c, unit tested and fuzzed): parse one shard's bytes. */
int s3_shard_parse(const uint8_t *p, size_t n, struct s3_entry **out, int *count);

/* s3_parse.c: URL-encode for encoding-type=url ('/' kept). */
struct dnet_hbuf;
void s3_url_encode(struct dnet_hbuf *b, const char *s, size_t n);

/* s3.c */
void s3_http_date(uint64_t ns, char *out, size_t cap);
void s3_iso_date(uint64_t ns, char *out, size_t cap);

#endif
