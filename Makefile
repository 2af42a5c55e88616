# kuma-cp, kuma-dp, kumactl: one build, three binaries, one common library.
#   make            release build (gcc) into build/release
#   make run        install missing packages, build, start kuma-cp on the memory store
#   make check      install, build with gcc and clang, unit tests (plain and ASan+UBSan),
#                   fuzz smoke runs, end-to-end tests, Kuma REST conformance
# Variant builds share this file: make VARIANT=asan|clang|release all

VARIANT ?= release
B       := build/$(VARIANT)
PKGS    := jansson yaml-0.1 libpq libcurl libmicrohttpd openssl libnghttp2 libprotobuf-c
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
CFLAGS  := -std=c11 -D_GNU_SOURCE $(OPT) $(WARN) -Iinclude -Ibuild/gen $(PKG_CFLAGS) -DKM_VERSION='"$(VERSION)"' -MMD -MP
# --as-needed: each binary loads only the libraries it calls (gcc on Debian does it by default,
# clang does not); an idle kuma-dp pays RSS for every library it maps.
LDFLAGS := -Wl,--as-needed $(filter -fsanitize=%,$(OPT))
LIBS    := $(PKG_LIBS) -lpthread -lm

# Protobuf: our own subset .proto files (proto/**, Envoy's package and message names and field
# numbers) plus the well-known types from /usr/include, compiled by protoc-c into build/gen/
# (shared by all variants). Include as "envoy/config/listener/v3/listener.pb-c.h".
GEN       := build/gen
PROTO_SYS := /usr/include
PROTO_SRC := $(sort $(shell find proto -name '*.proto' 2>/dev/null))
PROTO_WKT := google/protobuf/any.proto google/protobuf/duration.proto google/protobuf/struct.proto \
             google/protobuf/wrappers.proto google/protobuf/empty.proto
PROTO_REL := $(PROTO_SRC:proto/%=%) $(PROTO_WKT)
PB_C      := $(PROTO_REL:%.proto=$(GEN)/%.pb-c.c)
PB_H      := $(PROTO_REL:%.proto=$(GEN)/%.pb-c.h)
PB_OBJ    := $(PROTO_REL:%.proto=$(B)/gen/%.pb-c.o) $(B)/gen/km_pb_registry.o
# Extra flags for generated code only (protoc-c 1.4 output is clean with WARN today).
GEN_CFLAGS :=

LIB_SRC  := $(wildcard src/common/*.c src/cp/*.c src/ctl/*.c src/dp/*.c)
LIB_OBJ  := $(LIB_SRC:%.c=$(B)/%.o) $(PB_OBJ)
BINS     := $(B)/kuma-cp $(B)/kuma-dp $(B)/kumactl
UNIT_SRC := $(wildcard tests/unit/*.c)
UNIT_OBJ := $(UNIT_SRC:%.c=$(B)/%.o)
FUZZ_SRC := $(wildcard tests/fuzz/fuzz_*.c)
PYTEST   := /usr/bin/python3 -m pytest

.PHONY: xds-decode-check fuzzers all run demo check deps deps-test unit unit-asan build-all fuzz e2e conformance bench clean
all: $(BINS) $(B)/km-unit $(B)/grpc_echo_server

$(B)/%.o: %.c | $(GEN)/.stamp
	@mkdir -p $(dir $@)
	@echo "  CC      $@"
	@$(CC) $(CFLAGS) -c $< -o $@

# protoc-c writes into a private directory, then each file is renamed into place, so a build of
# another variant running at the same time never sees a half-written header.
$(GEN)/.stamp: $(PROTO_SRC) scripts/pb-registry.sh
	@echo "  PROTOC  $(GEN)"
	@t=$(GEN).tmp.$$$$; rm -rf $$t && mkdir -p $$t && \
	  protoc-c --c_out=$$t -Iproto -I$(PROTO_SYS) $(PROTO_REL) && \
	  (cd $$t && find . -name '*.pb-c.[ch]') | while read -r f; do \
	    mkdir -p $(GEN)/$${f%/*} && mv -f $$t/$$f $(GEN)/$$f; done; \
	  rm -rf $$t; \
	  scripts/pb-registry.sh $(GEN) > $(GEN)/km_pb_registry.c.tmp.$$$$ && \
	  mv -f $(GEN)/km_pb_registry.c.tmp.$$$$ $(GEN)/km_pb_registry.c && touch $@
$(PB_C) $(PB_H) $(GEN)/km_pb_registry.c: $(GEN)/.stamp ;

$(B)/gen/%.o: $(GEN)/%.c | $(GEN)/.stamp
	@mkdir -p $(dir $@)
	@echo "  CC      $@"
	@$(CC) $(CFLAGS) $(GEN_CFLAGS) -c $< -o $@

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

# Writes one sample of every protobuf message we define; tests/xds/decode_check.js decodes them
# with Envoy's real definitions (npm @grpc/grpc-js-xds) and fails on unknown or mistyped fields.
$(B)/xds-emit-samples: $(B)/tests/xds/emit_samples.o $(B)/libkm.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

xds-decode-check:
	$(MAKE) VARIANT=release build/release/xds-emit-samples
	tests/xds/setup.sh
	rm -rf build/xds-samples
	build/release/xds-emit-samples build/xds-samples
	node tests/xds/decode_check.js build/xds-samples

deps:
	@scripts/deps.sh build
deps-test:
	@scripts/deps.sh test

run: deps
	$(MAKE) VARIANT=release build/release/kuma-cp
	build/release/kuma-cp run $(if $(CONFIG),--config-file $(CONFIG))

# The quick start: kuma-cp, two sample services with kuma-dp sidecars; prints the curl that goes
# through both sidecars. Ctrl-C stops it.
demo:
	@scripts/demo.sh

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
	/usr/bin/python3 tests/conformance/run.py --binary build/release/kuma-cp --min-pass-rate 100

check: deps-test
	$(MAKE) unit
	$(MAKE) xds-decode-check
	$(MAKE) fuzz
	$(MAKE) conformance
	$(MAKE) e2e

bench: deps-test
	$(MAKE) VARIANT=release all
	bench/api.sh
	bench/xds.sh 1000 1000
	bench/dp.sh
	bench/dp_mtls.sh

# Test tools: a gRPC echo server on our transport (tests/e2e/test_grpc_interop.py).
$(B)/grpc_echo_server: $(B)/tests/tools/grpc_echo_server.o $(B)/libkm.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

# Benchmark tools (bench/*.c), built on demand by bench/*.sh.
$(B)/xds-load: $(B)/bench/xds_load.o $(B)/libkm.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)
$(B)/ca-bench: $(B)/bench/ca_bench.o $(B)/libkm.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)
$(B)/tls-handshake: $(B)/bench/tls_handshake.o $(B)/libkm.a
	$(CC) $(LDFLAGS) -o $@ $^ $(LIBS)

clean:
	rm -rf build

-include $(LIB_OBJ:.o=.d) $(UNIT_OBJ:.o=.d) $(B)/tests/xds/emit_samples.d $(B)/tests/tools/grpc_echo_server.d $(B)/bench/xds_load.d $(B)/bench/ca_bench.d $(B)/bench/tls_handshake.d $(B)/src/bin/kuma-cp.d $(B)/src/bin/kuma-dp.d $(B)/src/bin/kumactl.d
.SECONDARY:
