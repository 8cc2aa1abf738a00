# healing-pl: `make demo` runs the main experiment, `make test` the test suite.
# Both create .venv and install the project into it on first use.
# `make demo` ends with runs/table4-mnist5k/report.md and dashboard.html, and prints the dashboard's path;
# `make screenshot` then retakes docs/dashboard.png from that dashboard (needs chromium-headless-shell).
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH ?= torch==2.14.1 torchvision==0.29.1
export WANDB_MODE ?= offline

.PHONY: install demo screenshot test test-slow bench clean
DASHBOARD := runs/table4-mnist5k/dashboard.html

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

demo: install
	$(VENV)/bin/healing-pl grid configs/grids/table4_mnist5k.yaml

screenshot:
	docs/make_screenshot.sh $(DASHBOARD) docs/dashboard.png

test: install
	$(PY) -m pytest

test-slow: install
	$(PY) -m pytest -m slow

bench: install
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf runs .pytest_cache
