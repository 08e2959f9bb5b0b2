# tfcnn: `make demo` runs the Fashion-MNIST main job, `make test` the whole suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL ?= 2
# Test processes (pytest-xdist, whole files per process: module fixtures are built once). Most tests
# are dispatch-bound and keep one core busy, so 2 processes on 2 cores ran the suite 1.6x faster.
TEST_WORKERS ?= 2

.PHONY: venv demo test bench reliability clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,transfer,transfer-reference,bench]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	bash .ci/apt-deps.sh data
	$(VENV)/bin/tfcnn run pipelines/fashion_mnist.toml

test: $(STAMP)
	bash .ci/apt-deps.sh test
	$(PY) -m pytest tests -n $(TEST_WORKERS) --dist loadfile

bench: $(STAMP)
	$(PY) bench/train_throughput.py
	$(PY) bench/export_formats.py
	$(PY) bench/calibration.py
	$(PY) bench/onednn.py
	$(PY) bench/epoch_stall.py
	$(PY) bench/input_pipeline.py
	$(PY) bench/reliability.py

# bad inputs and faults, each judged (README: When things go wrong)
reliability: $(STAMP)
	$(PY) bench/reliability.py

clean:
	rm -rf runs build *.egg-info
