/* fuzz_blob.c - the blob engine's on-disk parsers on hostile files: blob file
 * headers, record headers (checksums, flags, sizes), index files (header, entries,
 * coverage), torn tails and zero gaps, through a real open/recover/read/write/
 * reopen cycle of the engine (fuzz_store.h has the input format and the workout).
 *
 * libFuzzer: make fuzz && build/fuzz/fuzz_blob tests/fuzz/corpus/blob
 * standalone: build/tests/fuzz_blob -n 200 tests/fuzz/corpus/blob */
#include "fuzz_files.h"

static const char *const names[] = {"blob-000001.data", "blob-000001.index", "blob-000002.data",
				    "blob-000002.index"};
#define NNAMES (sizeof(names) / sizeof(names[0]))

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	/* small blobs: rotation and sealing happen within one input */
	setenv("ELLIPTICS_BLOB_SIZE", "64K", 1);
	setenv("ELLIPTICS_BLOB_RESERVE", "4K", 1);
	return fz_files_run(data, size, "blob", names, NNAMES);
}

#ifdef DNET_FUZZ_STANDALONE
static void fill_small(const struct dnet_backend_ops *ops, struct dnet_backend *b)
{
	fz_put(ops, b, 0, 0, 10, 0);
	fz_put(ops, b, 1, 0, 0, 0);
	fz_put(ops, b, 2, 0, 300, 1);
	fz_del(ops, b, 3);
}

static void fill_rotated(const struct dnet_backend_ops *ops, struct dnet_backend *b)
{
	/* more than one 64 KiB blob: a sealed blob with its index, then an active one */
	fz_put(ops, b, 0, 0, 40000, 1);
	fz_put(ops, b, 1, 0, 30000, 1);
	fz_put(ops, b, 0, 0, 20, 0);
	fz_del(ops, b, 1);
	fz_put(ops, b, 2, 0, 100, 0);
	fz_put(ops, b, 2, 50, 10, 0); /* offset update */
	fz_put(ops, b, 3, 0, 5000, 1);
}

static void fill_btab(const struct dnet_backend_ops *ops, struct dnet_backend *b)
{
	/* a record over 64 KiB: it carries a block table */
	fz_put(ops, b, 0, 0, 65536 + 700, 1);
	fz_put(ops, b, 1, 0, 100, 0);
}

static void fz_make_seeds(const char *dir)
{
	setenv("ELLIPTICS_BLOB_SIZE", "64K", 1);
	setenv("ELLIPTICS_BLOB_RESERVE", "4K", 1);
	fz_seed_reset();
	fz_seed_write("blob", fill_small);
	fz_files_pack(dir, "small", names, NNAMES);
	/* the same without the index file: the blob is scanned */
	char p[1024];
	snprintf(p, sizeof(p), "%s/blob-000001.index", fz_dir);
	unlink(p);
	fz_files_pack(dir, "small-noindex", names, NNAMES);
	fz_seed_reset();
	fz_seed_write("blob", fill_rotated);
	fz_files_pack(dir, "rotated", names, NNAMES);
	fz_seed_reset();
	fz_seed_write("blob", fill_btab);
	fz_files_pack(dir, "btab", names, NNAMES);
	fz_cleanup_root();
}

int main(int argc, char **argv)
{
	return fz_main("fuzz_blob", argc, argv);
}
#endif
