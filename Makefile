# Everything a fresh machine needs: `make demo` (the main job on the bundled sample) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-fast native clean

setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml setup.py CMakeLists.txt $(wildcard csrc/*)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-build-isolation --no-deps -e .
	touch $(STAMP)

demo: setup
	$(VENV)/bin/vasa-engine demo -o demo.mp4

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

native:
	$(PY) setup.py build_ext --inplace

clean:
	rm -rf build *.egg-info vasa_engine/*.so $(STAMP)
