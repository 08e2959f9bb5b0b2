# tfcnn: `make demo` runs the Fashion-MNIST main job, `make test` the whole suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: venv demo test bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	bash .ci/apt-deps.sh data
	$(VENV)/bin/tfcnn run pipelines/fashion_mnist.toml

test: $(STAMP)
	bash .ci/apt-deps.sh test
	$(PY) -m pytest tests

bench: $(STAMP)
	$(PY) bench/train_throughput.py
	$(PY) bench/export_formats.py
	$(PY) bench/onednn.py
	$(PY) bench/epoch_stall.py

clean:
	rm -rf runs build *.egg-info
