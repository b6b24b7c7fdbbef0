# Elliptics - plain Makefile. Outputs go under build/ (or build/asan with SAN=1).
#   make              release build (-O2 -g)
#   make SAN=1        AddressSanitizer + UndefinedBehaviorSanitizer build in build/asan
#   make WERROR=1     warnings are errors (CI)
#   make unit         build and run the cmocka unit tests
#   make test         unit tests, then the pytest integration suite
CC ?= cc
BUILD ?= build
ifeq ($(SAN),1)
BUILD := build/asan
SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
endif

WARN := -Wall -Wextra -Wshadow -Wformat=2 -Wstrict-prototypes -Wmissing-prototypes \
	-Wno-unused-parameter -Wpointer-arith -Wvla
ifeq ($(WERROR),1)
WARN += -Werror
endif
OPT ?= -O2
CFLAGS_ALL := -std=c11 -D_GNU_SOURCE -g $(OPT) -pthread -MMD -MP $(WARN) $(SANFLAGS) \
	-Iinclude -Isrc $(CFLAGS)
LDFLAGS_ALL := -pthread $(SANFLAGS) $(LDFLAGS)
LIBS := -lssl -lcrypto -lxxhash
SERVER_LIBS := $(LIBS) -llmdb -ldb

COMMON_SRC := $(wildcard src/common/*.c)
CLIENT_SRC := $(wildcard src/client/*.c)
STORAGE_SRC := $(wildcard src/storage/*.c)
HTTP_SRC := $(filter-out src/http/embed.c,$(wildcard src/http/*.c))
SERVER_SRC := $(filter-out src/server/main.c,$(wildcard src/server/*.c)) $(HTTP_SRC)
TOOLS_SRC := $(wildcard tools/*.c)
UNIT_SRC := $(wildcard tests/unit/test_*.c)

obj = $(patsubst %.c,$(BUILD)/obj/%.o,$(1))

LIBCLIENT := $(BUILD)/libelliptics.a
BINS := $(BUILD)/ellipticsd $(BUILD)/elliptics $(BUILD)/bench/memcload $(BUILD)/bench/rawcopy
UNIT_BINS := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(UNIT_SRC))

.PHONY: all unit test clean fmt fuzz
# Objects built through pattern chains (tests, fuzz targets) are kept, not deleted
# as intermediates: the next `make unit` need not compile them again.
.SECONDARY:
all: $(BINS)

# The ring page (www/) is compiled into the binary: nothing is read from disk at
# run time. src/http/embed.c is a build-time generator, run on the build host.
WWW := $(sort $(wildcard www/*))
EMBED := $(BUILD)/tools/embed
ASSETS_C := $(BUILD)/gen/www_assets.c
ASSETS_O := $(BUILD)/obj/gen/www_assets.o
$(EMBED): src/http/embed.c
	@mkdir -p $(dir $@)
	$(CC) -std=c11 -O1 -o $@ $<
$(ASSETS_C): $(EMBED) $(WWW)
	@mkdir -p $(dir $@)
	$(EMBED) $@ $(WWW)
$(ASSETS_O): $(ASSETS_C)
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -c $< -o $@

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -c $< -o $@

$(LIBCLIENT): $(call obj,$(COMMON_SRC) $(CLIENT_SRC))
	@mkdir -p $(dir $@)
	rm -f $@
	ar rcs $@ $^

# The node links the client library: its S3 gateway is a client of the ring.
$(BUILD)/ellipticsd: $(call obj,src/server/main.c $(SERVER_SRC) $(STORAGE_SRC) $(COMMON_SRC) $(CLIENT_SRC)) $(ASSETS_O)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(SERVER_LIBS)

$(BUILD)/elliptics: $(call obj,$(TOOLS_SRC)) $(LIBCLIENT)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(LIBS) -lm

# bench/compare's closed-loop load for memcached (built with everything, so -Werror
# covers it).
$(BUILD)/bench/memcload: $(call obj,bench/memcload.c)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ -lm

# bench/compare's raw loopback copy: the ceiling for large GETs.
$(BUILD)/bench/rawcopy: $(call obj,bench/rawcopy.c)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ -lpthread

# Each unit test links every non-main object, so any module can be tested.
$(BUILD)/tests/%: $(BUILD)/obj/tests/unit/%.o $(call obj,$(SERVER_SRC) $(STORAGE_SRC) $(COMMON_SRC) $(CLIENT_SRC)) $(ASSETS_O)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(SERVER_LIBS) -lcmocka -lm

# Fuzz targets (tests/fuzz/fuzz_NAME.c), one per parser of untrusted bytes; each is
# built two ways. Standalone (gcc, -DDNET_FUZZ_STANDALONE, in $(BUILD)/tests): replays
# files, runs N random mutations of its corpus, or writes its seeds; `make unit` runs
# them. libFuzzer (clang, `make fuzz`, in build/fuzz): scripts/fuzz runs each for a
# bounded time on tests/fuzz/corpus/NAME (docs/security.md, "Fuzzing").
FUZZ_TARGETS := server http httpd auth config blob file lmdb bdb
FUZZ_STANDALONE := $(patsubst %,$(BUILD)/tests/fuzz_%,$(FUZZ_TARGETS))
$(BUILD)/obj/tests/fuzz/%_standalone.o: tests/fuzz/%.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -DDNET_FUZZ_STANDALONE -c $< -o $@
$(BUILD)/tests/fuzz_%: $(BUILD)/obj/tests/fuzz/fuzz_%_standalone.o $(call obj,$(SERVER_SRC) $(STORAGE_SRC) $(COMMON_SRC) $(CLIENT_SRC)) $(ASSETS_O)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(SERVER_LIBS)

# Unit tests, then bounded runs of the standalone fuzz drivers: structured random
# inputs for the receive paths, the corpus plus random mutations of it for the rest.
# The two longest (mostly waiting on fsync, no timing assertions) run alongside the
# others; their output follows once all are done.
FUZZ_CORPUS := tests/fuzz/corpus
UNIT_BG := $(BUILD)/tests/test_fault $(BUILD)/tests/test_backend_conformance
unit: $(UNIT_BINS) $(FUZZ_STANDALONE)
	@d=$$(mktemp -d) || exit 1; bad=; pids=; \
	trap 'kill $$pids 2>/dev/null; rm -rf "$$d"' EXIT; trap 'exit 130' INT TERM; \
	for t in $(UNIT_BG); do ( $$t > "$$d/$${t##*/}.log" 2>&1; echo $$? > "$$d/$${t##*/}.rc" ) & \
		pids="$$pids $$!"; done; \
	for t in $(filter-out $(UNIT_BG),$(UNIT_BINS)); do echo "== $$t"; $$t || bad="$$bad $$t"; done; \
	wait; for t in $(UNIT_BG); do echo "== $$t (ran alongside)"; cat "$$d/$${t##*/}.log"; \
		[ "$$(cat "$$d/$${t##*/}.rc")" = 0 ] || bad="$$bad $$t"; done; \
	if [ -n "$$bad" ]; then echo "== FAILED:$$bad"; exit 1; fi
	@echo "== $(BUILD)/tests/fuzz_server -n 20000"; cd $(BUILD)/tests && ./fuzz_server -n 20000
	@echo "== $(BUILD)/tests/fuzz_http -n 200000"; $(BUILD)/tests/fuzz_http -n 200000
	@echo "== $(BUILD)/tests/fuzz_httpd -n 20000"; cd $(BUILD)/tests && ./fuzz_httpd -n 20000
	@set -e; for t in auth:20000 config:2000 blob:50 file:100 lmdb:300 bdb:10; do \
		n=$${t%%:*}; echo "== $(BUILD)/tests/fuzz_$$n -n $${t#*:} $(FUZZ_CORPUS)/$$n"; \
		$(BUILD)/tests/fuzz_$$n -n $${t#*:} $(FUZZ_CORPUS)/$$n; done

# libFuzzer builds: the project's objects once with coverage and ASan+UBSan, each
# target linked with the libFuzzer driver.
FUZZ_BUILD := build/fuzz
FUZZ_CC ?= clang
FUZZ_SAN := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
FUZZ_CFLAGS := -std=c11 -D_GNU_SOURCE -g -O1 -pthread -MMD -MP $(FUZZ_SAN) -Iinclude -Isrc
FUZZ_LIB_OBJ := $(patsubst %.c,$(FUZZ_BUILD)/obj/%.o,$(SERVER_SRC) $(STORAGE_SRC) $(COMMON_SRC) $(CLIENT_SRC)) \
	$(FUZZ_BUILD)/obj/gen/www_assets.o
FUZZ_BINS := $(patsubst %,$(FUZZ_BUILD)/fuzz_%,$(FUZZ_TARGETS))
fuzz: $(FUZZ_BINS)
$(FUZZ_BUILD)/obj/tests/fuzz/%.o: tests/fuzz/%.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer -c $< -o $@
$(FUZZ_BUILD)/obj/gen/www_assets.o: $(ASSETS_C)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c $< -o $@
$(FUZZ_BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c $< -o $@
$(FUZZ_BUILD)/fuzz_%: $(FUZZ_BUILD)/obj/tests/fuzz/fuzz_%.o $(FUZZ_LIB_OBJ)
	$(FUZZ_CC) -pthread -fsanitize=fuzzer $(FUZZ_SAN) -o $@ $^ $(SERVER_LIBS)

test: all unit
	ELLIPTICS_BUILD=$(BUILD) /usr/bin/python3 -m pytest -q tests/integration

fmt:
	clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	rm -rf build

-include $(shell find $(BUILD)/obj $(FUZZ_BUILD)/obj -name '*.d' 2>/dev/null)
