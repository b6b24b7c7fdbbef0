/* fuzz_main.h - the plain-program driver of a fuzz target (gcc builds with
 * -DDNET_FUZZ_STANDALONE, run by `make unit`): replay files or directories, run N
 * random byte mutations of them, or write the target's seed corpus. The target
 * defines fz_make_seeds() and calls fz_main() from main(). */
#ifndef FUZZ_MAIN_H
#define FUZZ_MAIN_H

#include <dirent.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Writes the target's seeds (fz_make_seeds, per target) into dir. */
static inline void fz_make_seeds(const char *dir);

static uint8_t *fz_slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return NULL;
	size_t cap = 1 << 16, n = 0;
	uint8_t *p = malloc(cap);
	for (size_t r; p && (r = fread(p + n, 1, cap - n, f)) > 0;) {
		n += r;
		if (n == cap) {
			uint8_t *q = realloc(p, cap * 2);
			if (!q) {
				free(p);
				p = NULL;
				break;
			}
			p = q;
			cap *= 2;
		}
	}
	fclose(f);
	*len = n;
	return p;
}

static uint64_t fz_rng = 0x9e3779b97f4a7c15ull;
static uint64_t fz_next(void)
{
	fz_rng ^= fz_rng << 13;
	fz_rng ^= fz_rng >> 7;
	fz_rng ^= fz_rng << 17;
	return fz_rng;
}

/* Usage: NAME FILE...        replay files (a directory: every file in it)
 *        NAME -n N DIR       N inputs: random byte mutations of DIR's files
 *        NAME --seeds DIR    write the seed corpus into DIR */
static inline int fz_main(const char *name, int argc, char **argv)
{
	if (argc == 3 && !strcmp(argv[1], "--seeds")) {
		fz_make_seeds(argv[2]);
		return 0;
	}
	long n = -1;
	int first = 1;
	if (argc >= 3 && !strcmp(argv[1], "-n")) {
		n = atol(argv[2]);
		first = 3;
	}
	/* collect the files */
	char **files = NULL;
	size_t nf = 0;
	for (int i = first; i < argc; i++) {
		struct stat st;
		/* absolute: a target may chdir() into its scratch directory */
		char *arg = realpath(argv[i], NULL);
		if (!arg || stat(arg, &st) != 0) {
			perror(argv[i]);
			return 1;
		}
		if (!S_ISDIR(st.st_mode)) {
			files = realloc(files, (nf + 1) * sizeof(*files));
			files[nf++] = arg;
			continue;
		}
		DIR *d = opendir(arg);
		struct dirent *de;
		while (d && (de = readdir(d))) {
			if (de->d_name[0] == '.')
				continue;
			char p[4096];
			snprintf(p, sizeof(p), "%s/%s", arg, de->d_name);
			files = realloc(files, (nf + 1) * sizeof(*files));
			files[nf++] = strdup(p);
		}
		if (d)
			closedir(d);
		free(arg);
	}
	if (!nf) {
		fprintf(stderr, "%s: no input files\n", name);
		return 2;
	}
	for (size_t i = 0; i < nf; i++) {
		size_t len;
		uint8_t *p = fz_slurp(files[i], &len);
		if (!p) {
			perror(files[i]);
			return 1;
		}
		LLVMFuzzerTestOneInput(p, len);
		free(p);
	}
	for (long i = 0; i < n; i++) {
		size_t len;
		uint8_t *p = fz_slurp(files[fz_next() % nf], &len);
		if (!p)
			return 1;
		int flips = 1 + (int)(fz_next() % 8);
		for (int k = 0; k < flips && len; k++) {
			size_t at = fz_next() % len;
			switch (fz_next() % 4) {
			case 0:
				p[at] ^= (uint8_t)(1u << (fz_next() % 8));
				break;
			case 1:
				p[at] = (uint8_t)fz_next();
				break;
			case 2:
				len = at;
				break; /* truncate */
			default:
				p[at] = (uint8_t)(p[at] + 1 - 2 * (fz_next() % 2));
				break;
			}
		}
		LLVMFuzzerTestOneInput(p, len);
		free(p);
	}
	/* fd 1 itself: a target may have pointed stdout elsewhere */
	dprintf(1, "%s: %zu files replayed, %ld mutations, no failure\n", name, nf, n < 0 ? 0 : n);
	for (size_t i = 0; i < nf; i++)
		free(files[i]);
	free(files);
	return 0;
}

/* dir/NAME (printf-style) opened for writing, or exit. */
static inline FILE *fz_seed_open(const char *outdir, const char *fmt, ...)
{
	char name[256], p[4096];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(name, sizeof(name), fmt, ap);
	va_end(ap);
	snprintf(p, sizeof(p), "%s/%s", outdir, name);
	FILE *f = fopen(p, "wb");
	if (!f) {
		perror(p);
		exit(1);
	}
	return f;
}

#endif
