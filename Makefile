# tfcnn: `make demo` runs the Fashion-MNIST main job, `make test` the whole suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export TF_CPP_MIN_LOG_LEVEL ?= 2

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
	$(PY) -m pytest tests

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
