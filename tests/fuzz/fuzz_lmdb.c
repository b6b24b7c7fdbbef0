/* fuzz_lmdb.c - the lmdb engine's value parsers on hostile records: object headers
 * (magic, flags, sizes, checksums, inline vs chunked), chunk values, staged-upload
 * records and odd key sizes, through a real open (recovery) / read / write / reopen
 * cycle (fuzz_kv.h: how the input becomes records; fuzz_store.h: the workout).
 *
 * libFuzzer: make fuzz && build/fuzz/fuzz_lmdb tests/fuzz/corpus/lmdb
 * standalone: build/tests/fuzz_lmdb -n 200 tests/fuzz/corpus/lmdb */
#include <lmdb.h>

#include "fuzz_kv.h"

static const char *const dbname[3] = {"obj", "chunk", "upload"};

static MDB_env *env_open(unsigned flags)
{
	MDB_env *env;
	if (mdb_env_create(&env))
		abort();
	if (mdb_env_set_maxdbs(env, 4) || mdb_env_set_mapsize(env, 64u << 20) ||
	    mdb_env_open(env, fz_dir, flags, 0644))
		abort();
	return env;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	fz_init_dir();
	setenv("ELLIPTICS_LMDB_MAPSIZE", "64M", 1);
	fz_clean();
	if (mkdir(fz_dir, 0755) != 0 && errno != EEXIST)
		abort();
	struct fz_input in;
	fz_parse(data, size, &in);
	MDB_env *env = env_open(MDB_NOSYNC);
	MDB_txn *txn;
	MDB_dbi dbi[3];
	if (mdb_txn_begin(env, NULL, 0, &txn))
		abort();
	for (int i = 0; i < 3; i++)
		if (mdb_dbi_open(txn, dbname[i], MDB_CREATE, &dbi[i]))
			abort();
	for (size_t i = 0; i < in.n; i++) {
		uint8_t kb[128];
		size_t kl, vl;
		const uint8_t *v;
		int db;
		kv_split(&in.it[i], kb, &kl, &v, &vl, &db);
		MDB_val key = {kl, kb}, val = {vl, (void *)v};
		mdb_put(txn, dbi[db], &key, &val, 0); /* a refusal just leaves it out */
	}
	if (mdb_txn_commit(txn))
		abort();
	mdb_env_close(env);
	fz_free(&in);
	fz_workout("lmdb", DNET_FSYNC_NEVER);
	return 0;
}

#ifdef DNET_FUZZ_STANDALONE
static void fz_make_seeds(const char *dir)
{
	fz_init_dir();
	fz_clean();
	mkdir(fz_dir, 0755);
	setenv("ELLIPTICS_LMDB_MAPSIZE", "64M", 1);
	fz_seed_write("lmdb", kv_fill);
	char p[4096];
	snprintf(p, sizeof(p), "%s/objects", dir);
	FILE *f = fopen(p, "wb");
	if (!f) {
		perror(p);
		exit(1);
	}
	MDB_env *env = env_open(MDB_RDONLY);
	MDB_txn *txn;
	if (mdb_txn_begin(env, NULL, MDB_RDONLY, &txn))
		abort();
	for (int d = 0; d < 3; d++) {
		MDB_dbi dbi;
		MDB_cursor *c;
		MDB_val k, v;
		if (mdb_dbi_open(txn, dbname[d], 0, &dbi) || mdb_cursor_open(txn, dbi, &c))
			abort();
		for (int rc = mdb_cursor_get(c, &k, &v, MDB_FIRST); !rc;
		     rc = mdb_cursor_get(c, &k, &v, MDB_NEXT))
			kv_seed_item(f, d, k.mv_data, k.mv_size, v.mv_data, v.mv_size);
		mdb_cursor_close(c);
	}
	mdb_txn_abort(txn);
	mdb_env_close(env);
	fclose(f);
	fz_cleanup_root();
}

int main(int argc, char **argv)
{
	return fz_main("fuzz_lmdb", argc, argv);
}
#endif
