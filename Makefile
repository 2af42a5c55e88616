# kuma-cp, kuma-dp, kumactl: one build, three binaries, one common library.
#   make            release build (gcc) into build/release
#   make run        install missing packages, build, start kuma-cp on the memory store
#   make check      install, build with gcc and clang, unit tests (plain and ASan+UBSan),
#                   fuzz smoke runs, end-to-end tests, Kuma REST conformance
# Variant builds share this file: make VARIANT=asan|clang|release all

VARIANT ?= release
B       := build/$(VARIANT)
PKGS    := jansson yaml-0.1 libpq libcurl libmicrohttpd openssl
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

WARN := -Wall -Wextra -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wformat=2 \
        -Wvla -Wimplicit-fallthrough -Wno-unused-parameter
ifeq ($(VARIANT),release)
CC      := gcc
OPT     := -O2 -g
endif
ifeq ($(VARIANT),clang)
CC      := clang
OPT     := -O2 -g
endif
ifeq ($(VARIANT),asan)
CC      := clang
OPT     := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined -fno-sanitize-recover=all
endif
ifeq ($(VARIANT),fuzz)
CC      := clang
OPT     := -O1 -g -fno-omit-frame-pointer -fsanitize=address,undefined,fuzzer-no-link
endif
VERSION := $(shell git describe --always --dirty 2>/dev/null || echo dev)
CFLAGS  := -std=c11 -D_GNU_SOURCE $(OPT) $(WARN) -Iinclude $(PKG_CFLAGS) -DKM_VERSION='"$(VERSION)"' -MMD -MP
LDFLAGS := $(filter -fsanitize=%,$(OPT))
LIBS    := $(PKG_LIBS) -lpthread -lm

LIB_SRC  := $(wildcard src/common/*.c src/cp/*.c src/ctl/*.c)
LIB_OBJ  := $(LIB_SRC:%.c=$(B)/%.o)
BINS     := $(B)/kuma-cp $(B)/kuma-dp $(B)/kumactl
UNIT_SRC := $(wildcard tests/unit/*.c)
UNIT_OBJ := $(UNIT_SRC:%.c=$(B)/%.o)
FUZZ_SRC := $(wildcard tests/fuzz/fuzz_*.c)
PYTEST   := /usr/bin/python3 -m pytest

.PHONY: fuzzers all run check deps deps-test unit unit-asan build-all fuzz e2e conformance bench clean
all: $(BINS) $(B)/km-unit

$(B)/%.o: %.c
	@mkdir -p $(dir $@)
	@echo "  CC      $@"
	@$(CC) $(CFLAGS) -c $< -o $@

$(B)/libkm.a: $(LIB_OBJ)
	@rm -f $@
	ar rcs $@ $^

$(B)/%: $(B)/src/bin/%.o $(B)/libkm.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

$(B)/km-unit: $(UNIT_OBJ) $(B)/libkm.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

# libFuzzer targets (VARIANT=fuzz): tests/fuzz/fuzz_X.c -> build/fuzz/fuzz_X
$(B)/fuzz_%: $(B)/tests/fuzz/fuzz_%.o $(B)/libkm.a
	$(CC) $(filter-out -fsanitize=%,$(LDFLAGS)) -fsanitize=address,undefined,fuzzer -o $@ $^ $(LIBS)
fuzzers: $(FUZZ_SRC:tests/fuzz/%.c=$(B)/%)

deps:
	@scripts/deps.sh build
deps-test:
	@scripts/deps.sh test

run: deps
	$(MAKE) VARIANT=release build/release/kuma-cp
	build/release/kuma-cp run $(if $(CONFIG),--config-file $(CONFIG))

build-all:
	$(MAKE) VARIANT=release all
	$(MAKE) VARIANT=clang all
	$(MAKE) VARIANT=asan all

# Unit tests, plain and under ASan+UBSan, with a private PostgreSQL for the postgres store tests.
unit: build-all
	scripts/with-pg.sh build/release/km-unit
	ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 scripts/with-pg.sh build/asan/km-unit

fuzz:
	@scripts/fuzz.sh

e2e: build-all
	$(PYTEST) -q -p no:cacheprovider tests/e2e

conformance: build-all
	/usr/bin/python3 tests/conformance/run.py --binary build/release/kuma-cp

check: deps-test
	$(MAKE) unit
	$(MAKE) fuzz
	$(MAKE) conformance
	$(MAKE) e2e

bench: deps-test
	$(MAKE) VARIANT=release all
	bench/api.sh

clean:
	rm -rf build

-include $(LIB_OBJ:.o=.d) $(UNIT_OBJ:.o=.d) $(B)/src/bin/kuma-cp.d $(B)/src/bin/kuma-dp.d $(B)/src/bin/kumactl.d
.SECONDARY:
