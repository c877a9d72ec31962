# The two commands of the README, plus the benchmark. Each target makes its own virtualenv.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
ARGS   ?=

.PHONY: run test check lint system-deps bench clean

$(VENV)/.run-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e .
	touch $@

$(VENV)/.test-installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@ $(VENV)/.run-installed

## make run: install and run Portway (built-in default unless ARGS="-c portway.toml")
run: $(VENV)/.run-installed
	$(VENV)/bin/portway run $(ARGS)

## make test: install what the tests need (system packages too, when root) and run them
test: system-deps $(VENV)/.test-installed lint
	$(PY) -m pytest

lint: $(VENV)/.test-installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# ss (iproute2) reads socket timers in the keepalive test; prlimit (util-linux) caps descriptors;
# curl, wget and openssl are the real TLS and HTTP clients of the sni, gateway and proxy tests;
# htpasswd (apache2-utils) checks that the proxy's users files interoperate with Apache's;
# chromium loads pages through the forward proxy, trusting test CAs that certutil (libnss3-tools)
# puts in its NSS database.
system-deps:
	@if command -v ss >/dev/null && command -v prlimit >/dev/null && command -v curl >/dev/null \
		&& command -v openssl >/dev/null && command -v wget >/dev/null \
		&& command -v htpasswd >/dev/null && command -v chromium >/dev/null \
		&& command -v certutil >/dev/null; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			iproute2 util-linux curl wget openssl ca-certificates apache2-utils chromium libnss3-tools; \
	else echo "please install iproute2, util-linux, curl, wget, openssl, apache2-utils, chromium and libnss3-tools"; exit 1; fi

## make bench: HAProxy, nginx, iperf3 and wrk from apt, then the side-by-side benchmark
bench: $(VENV)/.run-installed
	sh bench/setup.sh
	$(PY) bench/run.py $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
