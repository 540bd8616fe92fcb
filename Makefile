# Two-command quick start: `make demo` and `make test` (see README).
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: demo test bench golden mutation clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/dirtysim run scenarios/quickstart.yaml -o out/quickstart

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/run.py

# Re-record tests/golden/fingerprints.json after an intended change of behaviour.
golden: $(STAMP)
	$(PY) tests/golden/golden.py

# Mutation run of the Python decision rules (not in CI: tens of minutes); see benchmarks/mutation/README.md.
# MUTANTS="dirtysim.migration.rate*" limits the run to one module; the scores go to benchmarks/mutation/results.txt.
mutation: $(STAMP)
	$(PY) -m pip install -q -e '.[test,mutation]'
	rm -rf mutants
	nice $(VENV)/bin/mutmut run --max-children 2 $(foreach m,$(MUTANTS),'$(m)')
	$(PY) benchmarks/mutation/score.py

clean:
	rm -rf mutants out .pytest_cache .hypothesis
