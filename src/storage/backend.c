/* backend.c - the registry of storage engines and helpers they share. */
#include <string.h>

#include <xxhash.h>

#include "backend.h"

extern const struct dnet_backend_ops dnet_blob_backend_ops;
extern const struct dnet_backend_ops dnet_file_backend_ops;
extern const struct dnet_backend_ops dnet_lmdb_backend_ops;
extern const struct dnet_backend_ops dnet_bdb_backend_ops;
extern const struct dnet_backend_ops dnet_mem_backend_ops;

/* nginx-style static module list: add an engine here and it is selectable. */
static const struct dnet_backend_ops *const engines[] = {
	&dnet_file_backend_ops,
	&dnet_blob_backend_ops,
	&dnet_lmdb_backend_ops,
	&dnet_bdb_backend_ops,
	&dnet_mem_backend_ops,
};

const struct dnet_backend_ops *dnet_backend_find(const char *name)
{
	for (size_t i = 0; i < sizeof(engines) / sizeof(engines[0]); i++)
		if (strcmp(engines[i]->name, name) == 0)
			return engines[i];
	return NULL;
}

const char *dnet_backend_names(void)
{
	static char names[256];
	if (!names[0]) {
		size_t off = 0;
		for (size_t i = 0; i < sizeof(engines) / sizeof(engines[0]); i++) {
			size_t l = strlen(engines[i]->name);
			if (off + l + 2 >= sizeof(names))
				break;
			if (off)
				names[off++] = '|';
			memcpy(names + off, engines[i]->name, l);
			off += l;
		}
		names[off] = '\0';
	}
	return names;
}

int dnet_fsync_policy_parse(const char *s)
{
	if (strcmp(s, "never") == 0)
		return DNET_FSYNC_NEVER;
	if (strcmp(s, "always") == 0)
		return DNET_FSYNC_ALWAYS;
	if (strcmp(s, "batch") == 0)
		return DNET_FSYNC_BATCH;
	return -1;
}

const char *dnet_fsync_policy_name(int policy)
{
	switch (policy) {
	case DNET_FSYNC_NEVER:
		return "never";
	case DNET_FSYNC_ALWAYS:
		return "always";
	case DNET_FSYNC_BATCH:
		return "batch";
	default:
		return "?";
	}
}

void dnet_backend_config_defaults(struct dnet_backend_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->fsync = DNET_FSYNC_NEVER;
	cfg->batch_max_delay_us = 0;
	cfg->batch_max_ops = 1024;
	cfg->upload_timeout_s = 3600;
}

void dnet_csum(const void *data, size_t len, uint8_t out[16])
{
	XXH128_hash_t h = XXH3_128bits(data, len);
	XXH128_canonical_t c;
	XXH128_canonicalFromHash(&c, h);
	memcpy(out, c.digest, 16);
}
