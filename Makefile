# make run  : set up the virtual environment and start the studio on the demo model
# make bench: CPU benchmarks, one JSON object per line (not part of make test;
#             bench/gpu_check.sh is for a GPU machine and is run by hand)
# make test : set up and run the test suite (CPU, offline)
# make test-fast: the tests not marked slow (no whole training runs or served apps), for work in progress
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Torch comes first and on its own: pick the build that fits the machine (Ascend users
# install the torch their torch_npu needs, then `make run` keeps it).
TORCH ?= torch==2.14.1 torchvision==0.29.1
HOST ?= 127.0.0.1
PORT ?= 7860

# Test files run in parallel, one file per worker (module fixtures such as a trained run stay
# shared within their file); up to 4 workers, one per core.
WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 1); [ $$n -gt 4 ] && n=4; echo $$n)
PYTEST := $(PY) -m pytest -q -n $(WORKERS) --dist loadfile --durations=15

# The browser tests drive Debian's Chromium (Playwright's own browser download fails offline).
CHROMIUM ?= /usr/bin/chromium

.PHONY: setup browser run test test-fast bench clean

$(VENV)/.installed: requirements.txt requirements-dev.txt requirements-quant.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -c "import torch, torchvision" 2>/dev/null || $(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

setup: $(VENV)/.installed

browser:
	@test -x $(CHROMIUM) || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } || \
		echo "Chromium is missing at $(CHROMIUM): install it (apt-get install chromium) or the browser tests fail"

run: setup
	$(PY) app.py --host $(HOST) --port $(PORT)

test: setup browser
	$(PYTEST)

test-fast: setup
	$(PYTEST) -m "not slow"

bench: setup
	@for script in $(filter-out bench/gpu_check.py,$(wildcard bench/*.py)); do \
		PYTHONPATH=. $(PY) $$script || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache
