/* fuzz_bdb.c - the bdb engine's value parsers on hostile records (the lmdb value
 * layout: object headers, chunks, staged uploads, odd key sizes), through a real
 * open (environment recovery, upload cleanup) / read / write / reopen cycle
 * (fuzz_kv.h: how the input becomes records; fuzz_store.h: the workout). The
 * records are written into plain btree files with Berkeley DB itself.
 *
 * libFuzzer: make fuzz && build/fuzz/fuzz_bdb tests/fuzz/corpus/bdb
 * standalone: build/tests/fuzz_bdb -n 50 tests/fuzz/corpus/bdb */
#include <db.h>

#include "fuzz_kv.h"

static const char *const dbfile[3] = {"objects.db", "chunks.db", "uploads.db"};

static DB *db_open_plain(int d, u_int32_t flags)
{
	DB *db;
	char p[1024];
	snprintf(p, sizeof(p), "%s/%s", fz_dir, dbfile[d]);
	if (db_create(&db, NULL, 0))
		abort();
	if (db->open(db, NULL, p, NULL, DB_BTREE, flags, 0644)) {
		db->close(db, 0);
		return NULL;
	}
	return db;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	fz_init_dir();
	fz_clean();
	if (mkdir(fz_dir, 0755) != 0 && errno != EEXIST)
		abort();
	/* Berkeley DB reads DB_CONFIG in the environment's home over what the engine
	 * set: small regions make an open ~20x cheaper, the code paths are the same */
	char p[1024];
	snprintf(p, sizeof(p), "%s/DB_CONFIG", fz_dir);
	FILE *f = fopen(p, "w");
	if (!f)
		abort();
	fputs("set_cachesize 0 4194304 1\nset_lk_max_locks 2000\nset_lk_max_objects 2000\n"
	      "set_lk_max_lockers 200\nset_tx_max 50\n",
	      f);
	fclose(f);
	struct fz_input in;
	fz_parse(data, size, &in);
	DB *db[3];
	for (int d = 0; d < 3; d++)
		if (!(db[d] = db_open_plain(d, DB_CREATE)))
			abort();
	for (size_t i = 0; i < in.n; i++) {
		uint8_t kb[128];
		size_t kl, vl;
		const uint8_t *v;
		int d;
		kv_split(&in.it[i], kb, &kl, &v, &vl, &d);
		DBT key, val;
		memset(&key, 0, sizeof(key));
		memset(&val, 0, sizeof(val));
		key.data = kb;
		key.size = (u_int32_t)kl;
		val.data = (void *)v;
		val.size = (u_int32_t)vl;
		db[d]->put(db[d], NULL, &key, &val, 0);
	}
	for (int d = 0; d < 3; d++)
		db[d]->close(db[d], 0);
	fz_free(&in);
	fz_workout("bdb", DNET_FSYNC_NEVER);
	return 0;
}

#ifdef DNET_FUZZ_STANDALONE
static void fz_make_seeds(const char *dir)
{
	fz_init_dir();
	fz_clean();
	mkdir(fz_dir, 0755);
	fz_seed_write("bdb", kv_fill);
	char p[4096];
	snprintf(p, sizeof(p), "%s/objects", dir);
	FILE *f = fopen(p, "wb");
	if (!f) {
		perror(p);
		exit(1);
	}
	for (int d = 0; d < 3; d++) {
		DB *db = db_open_plain(d, DB_RDONLY);
		DBC *c;
		if (!db || db->cursor(db, NULL, &c, 0))
			abort();
		DBT k, v;
		memset(&k, 0, sizeof(k));
		memset(&v, 0, sizeof(v));
		while (c->get(c, &k, &v, DB_NEXT) == 0)
			kv_seed_item(f, d, k.data, k.size, v.data, v.size);
		c->close(c);
		db->close(db, 0);
	}
	fclose(f);
	fz_cleanup_root();
}

int main(int argc, char **argv)
{
	return fz_main("fuzz_bdb", argc, argv);
}
#endif
