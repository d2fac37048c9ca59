# One command to set up and train, one to test. Python 3.11 is all a machine needs.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
# MLproject commands call `python`: put the venv first on PATH, as `source activate` would.
export PATH := $(abspath $(VENV))/bin:$(PATH)
STAMP  := $(VENV)/.installed

.PHONY: setup run serve test ui clean

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "make: $(PYTHON) not found; run 'make PYTHON=python3 ...'"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install the project

run: $(STAMP)    ## train the default model (resnet18 + ArcFace on digits) into mlruns/
	mlflow run . -e arcface --env-manager local

serve: $(STAMP)  ## serve ZOO_MODEL_URI (default models:/zoo-digits@champion) on http://127.0.0.1:3000 (ZOO_HOST)
	bentoml serve serving.service:ZooService

test: $(STAMP)   ## ruff, then the whole test suite (beside a throwaway PostgreSQL where it is installed)
	$(PY) -m ruff check .
	$(PY) tests/support/throwaway_postgres.py $(PY) -m pytest

ui: $(STAMP)     ## the MLflow UI over the embedded store
	mlflow ui --backend-store-uri sqlite:///mlruns/mlflow.db --default-artifact-root ./mlruns

clean:
	rm -rf $(VENV) build *.egg-info
