/* fuzz_files.h - for the engines whose on-disk state is plain files (blob, file):
 * each container item is appended to one of the target's file names, then the
 * engine is put through fz_workout(); and the seed side, packing a store's files. */
#ifndef FUZZ_FILES_H
#define FUZZ_FILES_H

#include <fcntl.h>

#include "fuzz_store.h"

/* fz_nfiles names relative to the data directory (subdirectories are created). */
static inline void fz_files_write(const struct fz_input *in, const char *const *names,
				  size_t nfiles)
{
	for (size_t i = 0; i < in->n; i++) {
		const char *nm = names[in->it[i].slot % nfiles];
		char p[1024];
		const char *slash = strchr(nm, '/');
		if (slash) {
			snprintf(p, sizeof(p), "%s/%.*s", fz_dir, (int)(slash - nm), nm);
			mkdir(p, 0755);
		}
		snprintf(p, sizeof(p), "%s/%s", fz_dir, nm);
		int fd = open(p, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
		if (fd < 0)
			abort();
		const uint8_t *q = in->it[i].p;
		for (size_t left = in->it[i].len; left;) {
			ssize_t w = write(fd, q, left);
			if (w <= 0)
				abort();
			q += w;
			left -= (size_t)w;
		}
		close(fd);
	}
}

static inline int fz_files_run(const uint8_t *data, size_t size, const char *engine,
			       const char *const *names, size_t nfiles)
{
	fz_init_dir();
	fz_clean();
	if (mkdir(fz_dir, 0755) != 0 && errno != EEXIST)
		abort();
	struct fz_input in;
	fz_parse(data, size, &in);
	fz_files_write(&in, names, nfiles);
	fz_free(&in);
	fz_workout(engine, DNET_FSYNC_NEVER);
	return 0;
}

#ifdef DNET_FUZZ_STANDALONE
/* Packs the store in fz_dir (the given names that exist) into dir/name. */
static inline void fz_files_pack(const char *dir, const char *name, const char *const *names,
				 size_t nfiles)
{
	char p[4096];
	snprintf(p, sizeof(p), "%s/%s", dir, name);
	FILE *f = fopen(p, "wb");
	if (!f) {
		perror(p);
		exit(1);
	}
	for (size_t i = 0; i < nfiles; i++) {
		char q[1024];
		snprintf(q, sizeof(q), "%s/%s", fz_dir, names[i]);
		size_t len;
		uint8_t *c = fz_slurp(q, &len);
		if (!c)
			continue;
		fz_pack_item(f, (uint8_t)i, c, len);
		free(c);
	}
	fclose(f);
}

static inline void fz_seed_reset(void)
{
	fz_init_dir();
	fz_clean();
	mkdir(fz_dir, 0755);
}

static inline void fz_put(const struct dnet_backend_ops *ops, struct dnet_backend *b, int k,
			  uint64_t off, size_t len, int zeros)
{
	uint8_t id[DNET_ID_SIZE];
	fz_known_id(k, id);
	uint8_t *p = calloc(1, len ? len : 1);
	if (!p)
		abort();
	for (size_t i = 0; i < len && !zeros; i++)
		p[i] = (uint8_t)('a' + i % 26);
	if (fz_write(ops, b, id, off, p, len) != 0) {
		fprintf(stderr, "seed: write failed\n");
		exit(1);
	}
	free(p);
}

static inline void fz_del(const struct dnet_backend_ops *ops, struct dnet_backend *b, int k)
{
	uint8_t id[DNET_ID_SIZE];
	fz_known_id(k, id);
	ops->del(b, id);
}
#endif

#endif
