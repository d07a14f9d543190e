# The two commands of README.md. Both build .venv on first use (torch first, pinned: an unpinned
# torch pulls gigabytes of CUDA wheels), then run.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.selflong-installed
DEMO_DIR ?= data/demo

.PHONY: test demo install clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest

demo: $(STAMP)
	$(PY) index.py store.path=$(DEMO_DIR)/chroma
	$(PY) index.py store.path=$(DEMO_DIR)/chroma top_k=3 \
		'query=["How do I catch an exception and re-raise it?","What does the yield keyword do in a function?","How can I read a CSV file?"]'

clean:
	rm -rf $(VENV) $(DEMO_DIR)
