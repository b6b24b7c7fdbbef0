/* xxh.h - xxHash for the storage engines. On x86-64, Debian's libxxhash also
 * exports runtime-dispatched XXH3 (AVX2/AVX-512 when the CPU has them; SSE2
 * otherwise): about 3x faster on data already in cache (16 -> 49 GB/s for 1 MiB
 * on the CI machines), the same on data streamed from memory. The digests are
 * identical, so this changes nothing on disk. */
#ifndef DNET_STORAGE_XXH_H
#define DNET_STORAGE_XXH_H

#include <xxhash.h>
#if defined(__x86_64__) && !defined(DNET_NO_XXH_DISPATCH)
#include <xxh_x86dispatch.h>
#endif

#endif
