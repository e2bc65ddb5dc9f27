# bmplan - the only build entry point.
#
#   make                 build/bmplan, build/bmrun, build/libbmplan.a
#   make test            unit tests (Check) and CLI tests
#   make SANITIZE=1 test the same under ASan + UBSan (in build/san)
#   make CUDA=0          build without the CUDA backend
#   make demo            plan a bundled real model on an example budget
#   make bench           benchmarks (prints figures, asserts nothing)
#   make valgrind        the CLI tests with every call under valgrind memcheck
#   make fuzz            libFuzzer targets (clang), FUZZ_SECONDS each
#                        (FUZZ_TARGETS="size graph", FUZZ_RUNS=N executions)

CC       ?= gcc
NVCC     ?= $(shell command -v nvcc 2>/dev/null || { test -x /usr/local/cuda/bin/nvcc && echo /usr/local/cuda/bin/nvcc; })
PKGS     := jansson yaml-0.1 libzstd
CUDA     ?= $(if $(NVCC),1,0)
# V=1 shows the full commands
Q        := $(if $(V),,@)

ifeq ($(SANITIZE),1)
BUILD    ?= build/san
SANFLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
OPTFLAGS := -O1 -g
else
BUILD    ?= build
SANFLAGS :=
OPTFLAGS := -O2 -g
endif

# A fresh machine: install what is missing (or print how) before the flags
# below are read from pkg-config. `make clean` needs nothing.
ifneq ($(MAKECMDGOALS),clean)
ifneq ($(shell pkg-config --exists $(PKGS) check openblas 2>/dev/null && echo ok),ok)
$(info bmplan: installing missing build dependencies (scripts/deps.sh))
DEPS_RC := $(shell bash scripts/deps.sh >&2; echo $$?)
endif
endif

PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
CHECK_CFLAGS := $(shell pkg-config --cflags check 2>/dev/null)
CHECK_LIBS   := $(shell pkg-config --libs check 2>/dev/null)
BLAS_CFLAGS  := $(shell pkg-config --cflags openblas 2>/dev/null)
BLAS_LIBS    := $(shell pkg-config --libs openblas 2>/dev/null)

CFLAGS   ?= $(OPTFLAGS)
CFLAGS   += -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -Wno-missing-field-initializers -Wno-format-truncation \
            -pthread -Ilib -Iformats -Iplanner $(PKG_CFLAGS) $(BLAS_CFLAGS) $(SANFLAGS) -MMD -MP
LDFLAGS  += -pthread $(SANFLAGS)
LDLIBS   += $(PKG_LIBS) $(BLAS_LIBS) -ldl -lm

LIB_SRC  := $(sort $(wildcard lib/*.c formats/*.c planner/*.c))
CLI_SRC  := $(sort $(wildcard cli/*.c))
LIB_OBJ  := $(LIB_SRC:%.c=$(BUILD)/obj/%.o)
CLI_OBJ  := $(CLI_SRC:%.c=$(BUILD)/obj/%.o)
TEST_SRC := $(sort $(wildcard tests/unit/test_*.c))
TEST_BIN := $(TEST_SRC:tests/unit/%.c=$(BUILD)/tests/%)
TEST_SUPPORT_SRC := $(sort $(wildcard tests/unit/support_*.c))
TEST_SUPPORT_OBJ := $(TEST_SUPPORT_SRC:%.c=$(BUILD)/obj/%.o)

# The CUDA backend: a shared library loaded with dlopen by --backend cuda,
# for Hopper (sm_90) with PTX for later GPUs; the CUDA runtime and cuBLAS
# are found through an rpath to the toolkit that built it.
CUDA_SRC := $(sort $(wildcard lib/cuda/*.cu))
CUDA_LIB := $(BUILD)/libbmplan_cuda.so
CUDA_HOME := $(patsubst %/bin/nvcc,%,$(NVCC))
NVCCFLAGS ?= -O2 -std=c++17 -Xcompiler -fPIC,-fvisibility=hidden,-Wall,-Wextra,-Werror \
             -Werror all-warnings \
             -gencode arch=compute_90,code=sm_90 -gencode arch=compute_90,code=compute_90 \
             -Ilib -Iformats -Iplanner $(filter -I%,$(PKG_CFLAGS))
CUDA_LIBS := -cudart shared -Xlinker -rpath,$(CUDA_HOME)/lib64 -lcublas \
             -Xlinker --version-script=lib/cuda/libbmplan_cuda.map -Xlinker -z,defs \
             -Xlinker -z,nodelete
# GPU tests: a Check program on the public API (plain C, so `make test`
# compile-checks it everywhere); it dlopens the backend at run time.
GPU_TEST := $(BUILD)/tests/gpu/test_cuda
GPU_BENCH := $(BUILD)/bench/gpu_bench

ALL := $(BUILD)/libbmplan.a $(BUILD)/bmplan $(BUILD)/bmrun
ifeq ($(CUDA),1)
ifneq ($(CUDA_SRC),)
ALL += $(CUDA_LIB)
endif
endif

.PHONY: all test test-unit test-cli test-gpu demo bench fuzz valgrind clean deps check-deps
all: check-deps $(ALL)

# Dependencies were installed at parse time when missing; stop clearly if
# that was not possible (not root, no network).
check-deps:
	@pkg-config --exists $(PKGS) check openblas || { echo "bmplan: missing build dependencies: run 'sudo bash scripts/deps.sh'" >&2; exit 1; }

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(Q)$(CC) $(CFLAGS) $(CHECK_CFLAGS) -c $< -o $@

$(BUILD)/libbmplan.a: $(LIB_OBJ)
	@mkdir -p $(dir $@)
	@rm -f $@
	$(Q)ar rcs $@ $^

$(BUILD)/bmplan: $(CLI_OBJ) $(BUILD)/libbmplan.a
	$(Q)$(CC) $(LDFLAGS) -o $@ $(CLI_OBJ) $(BUILD)/libbmplan.a $(LDLIBS)

$(BUILD)/bmrun: $(BUILD)/bmplan
	ln -f $< $@

$(CUDA_LIB): $(CUDA_SRC) $(wildcard lib/cuda/*.h) lib/cuda/libbmplan_cuda.map lib/bmplan.h lib/device.h
	@mkdir -p $(dir $@)
	$(Q)$(NVCC) $(NVCCFLAGS) -shared -o $@ $(CUDA_SRC) $(CUDA_LIBS)

$(GPU_TEST): tests/gpu/test_cuda.c $(BUILD)/libbmplan.a
	@mkdir -p $(dir $@)
	$(Q)$(CC) $(CFLAGS) $(CHECK_CFLAGS) -o $@ $< $(BUILD)/libbmplan.a $(LDFLAGS) $(CHECK_LIBS) $(LDLIBS)

$(GPU_BENCH): bench/gpu_bench.c $(BUILD)/libbmplan.a
	@mkdir -p $(dir $@)
	$(Q)$(CC) $(CFLAGS) -o $@ $< $(BUILD)/libbmplan.a $(LDFLAGS) $(LDLIBS)

$(BUILD)/tests/%: tests/unit/%.c $(BUILD)/libbmplan.a $(TEST_SUPPORT_OBJ)
	@mkdir -p $(dir $@)
	$(Q)$(CC) $(CFLAGS) $(CHECK_CFLAGS) -Itests/unit -o $@ $< $(TEST_SUPPORT_OBJ) $(BUILD)/libbmplan.a \
	    $(LDFLAGS) $(CHECK_LIBS) $(LDLIBS)

test: all $(TEST_BIN) $(GPU_TEST) $(GPU_BENCH)
	@bash tests/gpu/maybe_skip.sh $(BUILD)
	@BUILD=$(BUILD) bash tests/run_unit.sh $(TEST_BIN)
	@BMPLAN=$(BUILD)/bmplan BUILD=$(BUILD) bash tests/cli/run.sh

test-unit: all $(TEST_BIN)
	@BUILD=$(BUILD) bash tests/run_unit.sh $(TEST_BIN)

test-cli: all
	@BMPLAN=$(BUILD)/bmplan BUILD=$(BUILD) bash tests/cli/run.sh

test-gpu: all $(GPU_TEST)
	@BMPLAN=$(BUILD)/bmplan BUILD=$(BUILD) bash tests/gpu/run.sh

demo: all
	$(BUILD)/bmplan plan examples/llama-2-70b/graph.yaml \
	    --max-memory 0=40GiB,1=40GiB,cpu=64GiB --report

bench: all
	@BMPLAN=$(BUILD)/bmplan BUILD=$(BUILD) bash bench/run.sh

valgrind: all
	@BUILD=$(BUILD) bash tests/cli/valgrind.sh

fuzz:
	@FUZZ_RUNS=$(FUZZ_RUNS) bash tests/fuzz/run.sh $(or $(FUZZ_SECONDS),10) $(FUZZ_TARGETS)

clean:
	rm -rf build

-include $(LIB_OBJ:.o=.d) $(CLI_OBJ:.o=.d)
