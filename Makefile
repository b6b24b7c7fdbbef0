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
BINS := $(BUILD)/ellipticsd $(BUILD)/elliptics
UNIT_BINS := $(patsubst tests/unit/%.c,$(BUILD)/tests/%,$(UNIT_SRC))

.PHONY: all unit test clean fmt fuzz
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

$(BUILD)/ellipticsd: $(call obj,src/server/main.c $(SERVER_SRC) $(STORAGE_SRC) $(COMMON_SRC)) $(ASSETS_O)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(SERVER_LIBS)

$(BUILD)/elliptics: $(call obj,$(TOOLS_SRC)) $(LIBCLIENT)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(LIBS) -lm

# Each unit test links every non-main object, so any module can be tested.
$(BUILD)/tests/%: $(BUILD)/obj/tests/unit/%.o $(call obj,$(SERVER_SRC) $(STORAGE_SRC) $(COMMON_SRC) $(CLIENT_SRC)) $(ASSETS_O)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(SERVER_LIBS) -lcmocka -lm

FUZZ_BIN := $(BUILD)/tests/fuzz_server
$(BUILD)/obj/tests/fuzz/fuzz_server_standalone.o: tests/fuzz/fuzz_server.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -DDNET_FUZZ_STANDALONE -c $< -o $@
$(FUZZ_BIN): $(BUILD)/obj/tests/fuzz/fuzz_server_standalone.o $(call obj,$(SERVER_SRC) $(STORAGE_SRC) $(COMMON_SRC)) $(ASSETS_O)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(SERVER_LIBS)
# The HTTP endpoint's connection handling, through a real in-process node.
FUZZ_HTTPD_BIN := $(BUILD)/tests/fuzz_httpd
$(BUILD)/obj/tests/fuzz/fuzz_httpd_standalone.o: tests/fuzz/fuzz_httpd.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -DDNET_FUZZ_STANDALONE -c $< -o $@
$(FUZZ_HTTPD_BIN): $(BUILD)/obj/tests/fuzz/fuzz_httpd_standalone.o $(call obj,$(SERVER_SRC) $(STORAGE_SRC) $(COMMON_SRC)) $(ASSETS_O)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $^ $(SERVER_LIBS)
# The HTTP request parser and chunked decoder on their own (pure functions).
FUZZ_HTTP_BIN := $(BUILD)/tests/fuzz_http
$(BUILD)/obj/tests/fuzz/fuzz_http_standalone.o: tests/fuzz/fuzz_http.c
	@mkdir -p $(dir $@)
	$(CC) $(CFLAGS_ALL) -DDNET_FUZZ_STANDALONE -c $< -o $@
$(FUZZ_HTTP_BIN): $(BUILD)/obj/tests/fuzz/fuzz_http_standalone.o $(call obj,src/http/parser.c)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS_ALL) -o $@ $^

# Unit tests, then a bounded structured-random run of the server's receive path.
unit: $(UNIT_BINS) $(FUZZ_BIN) $(FUZZ_HTTP_BIN) $(FUZZ_HTTPD_BIN)
	@set -e; for t in $(UNIT_BINS); do echo "== $$t"; $$t; done
	@echo "== $(FUZZ_BIN) -n 20000"; cd $(BUILD)/tests && ./fuzz_server -n 20000
	@echo "== $(FUZZ_HTTP_BIN) -n 200000"; $(FUZZ_HTTP_BIN) -n 200000
	@echo "== $(FUZZ_HTTPD_BIN) -n 20000"; cd $(BUILD)/tests && ./fuzz_httpd -n 20000

# libFuzzer builds (clang): make fuzz && build/fuzz/fuzz_server -max_total_time=60 CORPUS_DIR
# (and build/fuzz/fuzz_http, build/fuzz/fuzz_httpd the same way for the HTTP parser and
# the HTTP connection handling).
FUZZ_CFLAGS := -std=c11 -D_GNU_SOURCE -g -O1 -pthread -fsanitize=fuzzer,address,undefined -Iinclude -Isrc
fuzz: build/fuzz/fuzz_server build/fuzz/fuzz_http build/fuzz/fuzz_httpd
build/fuzz/fuzz_server: $(SERVER_SRC) $(STORAGE_SRC) $(COMMON_SRC) $(ASSETS_C) tests/fuzz/fuzz_server.c
	@mkdir -p build/fuzz
	clang $(FUZZ_CFLAGS) -o $@ $^ $(SERVER_LIBS)
build/fuzz/fuzz_httpd: $(SERVER_SRC) $(STORAGE_SRC) $(COMMON_SRC) $(ASSETS_C) tests/fuzz/fuzz_httpd.c
	@mkdir -p build/fuzz
	clang $(FUZZ_CFLAGS) -o $@ $^ $(SERVER_LIBS)
build/fuzz/fuzz_http: src/http/parser.c tests/fuzz/fuzz_http.c
	@mkdir -p build/fuzz
	clang $(FUZZ_CFLAGS) -o $@ $^

test: all unit
	ELLIPTICS_BUILD=$(BUILD) /usr/bin/python3 -m pytest -q tests/integration

fmt:
	clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	rm -rf build

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
