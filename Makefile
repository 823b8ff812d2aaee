# c0 — every target sets itself up from the project's own files on a fresh clone.
PY      := .venv/bin/python
# The interpreter .venv is built on: the distribution's CPython 3.11 where there is one.
# Debian's is built with profile-guided optimisation and LTO and linked statically; a
# pyenv build (the first python3 on these machines' PATH) is neither, and the swarm
# spent 15-20 % more CPU per job on it (bench/README.md, twelfth session). BASE_PY=...
# picks another; a .venv built on a different interpreter is rebuilt.
SYSTEM_PATH := $(PATH)
BASE_PY ?= $(shell PATH='$(SYSTEM_PATH)'; for p in /usr/bin/python3.11 python3.11 python3; do \
	q=$$(command -v $$p) && { echo $$q; break; }; done)
VENV_OK := .venv/.installed-$(notdir $(BASE_PY))
SPEEDUPS := .venv/.speedups
ANVIL   := .tools/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil
export PATH := $(CURDIR)/.venv/bin:$(PATH)

.PHONY: all demo test test-fast soak bench lint venv tools clean

all: test

$(VENV_OK): requirements.lock pyproject.toml
	@base=$$($(BASE_PY) -c 'import os, sys; print(os.path.realpath(sys.executable))'); \
	if [ -x $(PY) ] && [ "$$($(PY) -c 'import os, sys; print(os.path.realpath(sys._base_executable))')" != "$$base" ]; then \
		echo "make: .venv was built on another interpreter; rebuilding it on $$base"; rm -rf .venv; fi
	test -x $(PY) || $(BASE_PY) -m venv .venv
	$(PY) -m pip --version >/dev/null 2>&1 || $(PY) -m ensurepip --upgrade >/dev/null
	$(PY) -m pip install --quiet --disable-pip-version-check uv==0.13.9
	.venv/bin/uv pip install --python $(PY) --quiet --compile-bytecode -r requirements.lock
	.venv/bin/uv pip install --python $(PY) --quiet --no-deps -e .
	touch $(VENV_OK)

# The mypyc build of the CBOR codec (protocol/cbor_impl.py), rebuilt when it changes.
$(SPEEDUPS): $(VENV_OK) protocol/cbor_impl.py protocol/cbor_types.py protocol/errors.py tools/build_speedups.py
	$(PY) tools/build_speedups.py
	touch $(SPEEDUPS)

venv: $(VENV_OK) $(SPEEDUPS)

$(ANVIL): tools/package.json tools/package-lock.json
	mkdir -p .tools
	cp tools/package.json tools/package-lock.json .tools/
	cd .tools && npm ci --no-audit --no-fund --loglevel=error
	test -x $(ANVIL) && touch $(ANVIL)

tools: $(ANVIL)

lint: $(VENV_OK)
	.venv/bin/ruff check protocol node testnet tests bench tools
	.venv/bin/ruff format --check protocol node testnet tests bench tools
	.venv/bin/mypy --strict protocol

test: $(VENV_OK) $(SPEEDUPS) $(ANVIL) lint
	$(PY) tools/build_speedups.py --check
	C0_ANVIL=$(CURDIR)/$(ANVIL) $(PY) -m pytest -q -m "not soak"

# Long runs kept out of make test (2,000 jobs between one client and one worker: ~15 min).
soak: $(VENV_OK) $(SPEEDUPS) $(ANVIL)
	C0_ANVIL=$(CURDIR)/$(ANVIL) $(PY) -m pytest -q -m soak

test-fast: $(VENV_OK) $(SPEEDUPS)
	$(PY) -m pytest -q -m "not slow and not soak"

demo: $(VENV_OK) $(SPEEDUPS) $(ANVIL)
	C0_ANVIL=$(CURDIR)/$(ANVIL) $(PY) -m testnet.demo

bench: $(VENV_OK) $(SPEEDUPS) $(ANVIL)
	C0_ANVIL=$(CURDIR)/$(ANVIL) $(PY) -m bench

clean:
	rm -rf .venv .tools build *.egg-info .pytest_cache .mypy_cache .ruff_cache
