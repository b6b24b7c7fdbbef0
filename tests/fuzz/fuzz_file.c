/* fuzz_file.c - the file engine's per-object format on hostile files: the 128-byte
 * header (magic, sizes, ID, header checksum), the data and the per-block checksum
 * footer, short and overlong files, stray files in tmp/, through a real open/read/
 * write/reopen cycle (fuzz_store.h has the input format and the workout).
 *
 * libFuzzer: make fuzz && build/fuzz/fuzz_file tests/fuzz/corpus/file
 * standalone: build/tests/fuzz_file -n 200 tests/fuzz/corpus/file */
#include "common/id.h"
#include "fuzz_files.h"

/* The object files of the known IDs (names filled in at start), and tmp/ leftovers. */
static char name_buf[FZ_NKNOWN][2 + 1 + 2 * DNET_ID_SIZE + 1];
static const char *names[FZ_NKNOWN + 2];
#define NNAMES (sizeof(names) / sizeof(names[0]))

static void init_names(void)
{
	if (names[0])
		return;
	for (int k = 0; k < FZ_NKNOWN; k++) {
		uint8_t id[DNET_ID_SIZE];
		char hex[2 * DNET_ID_SIZE + 1];
		fz_known_id(k, id);
		dnet_id_to_hex(hex, id, DNET_ID_SIZE);
		snprintf(name_buf[k], sizeof(name_buf[k]), "%.2s/%s", hex, hex);
		names[k] = name_buf[k];
	}
	names[FZ_NKNOWN] = "tmp/0000000000000001.tmp";
	names[FZ_NKNOWN + 1] = "00/not-an-object";
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	init_names();
	return fz_files_run(data, size, "file", names, NNAMES);
}

#ifdef DNET_FUZZ_STANDALONE
static void fill(const struct dnet_backend_ops *ops, struct dnet_backend *b)
{
	fz_put(ops, b, 0, 0, 10, 0);
	fz_put(ops, b, 1, 0, 0, 0);
	fz_put(ops, b, 2, 0, 70000, 1); /* two 64 KiB blocks */
	fz_put(ops, b, 3, 0, 200, 0);
	fz_put(ops, b, 3, 100, 10, 0); /* offset update */
}

static void fz_make_seeds(const char *dir)
{
	init_names();
	fz_seed_reset();
	fz_seed_write("file", fill);
	fz_files_pack(dir, "objects", names, NNAMES);
	fz_cleanup_root();
}

int main(int argc, char **argv)
{
	return fz_main("fuzz_file", argc, argv);
}
#endif
