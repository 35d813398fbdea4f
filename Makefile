# Two entry points for a newcomer on a fresh machine (see README.md):
#   make demo   - set everything up, run dense FedAvg and HideNseek (density 0.1) for 5 Fashion-MNIST rounds each,
#                 plot accuracy against bytes moved each way (runs/demo/report.png) and compare them in one line
#   make test   - set everything up, run the test suite
#   make test-fast - the inner loop: every test except those marked slow (they start SuperLinks, Ray, Flower
#                    binaries or the console script, or repeat a faster test at many CPU-seconds)
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_OUT ?= runs/demo

.PHONY: setup demo test test-fast lint clean

$(VENV)/.installed: pyproject.toml
	@if [ ! -d /usr/share/datasets/fashion-mnist ]; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist; \
	fi
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/fedprune simulate --rounds 5 --out $(DEMO_OUT)/fedavg
	$(VENV)/bin/fedprune simulate --strategy hidenseek --density 0.1 --rounds 5 --out $(DEMO_OUT)/hidenseek
	$(VENV)/bin/fedprune report $(DEMO_OUT)/fedavg $(DEMO_OUT)/hidenseek --out $(DEMO_OUT)/report.png

test: setup
	$(VENV)/bin/python -m pytest -q

test-fast: setup
	$(VENV)/bin/python -m pytest -q -m "not slow" -p no:warnings

lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
