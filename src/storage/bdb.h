/* bdb.h - the bdb engine (src/storage/bdb.c) beyond backend.h: a test hook. */
#ifndef DNET_BDB_H
#define DNET_BDB_H

#include <db.h>

#include "backend.h"

/* Test hook: the BDB environment and the objects.db and chunks.db handles of b (which
 * must be a bdb engine's), so that a test can run transactions of its own beside the
 * engine's and take the locks that make an engine txn wait or lose a deadlock. The
 * environment is DB_PRIVATE: no other handle can join it. */
void dnet_bdb_test_handles(struct dnet_backend *b, DB_ENV **env, DB **objects, DB **chunks);

#endif
