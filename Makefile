# netprobe developer entry points. `make run` and `make test` set up everything:
# Debian packages (installed when root, else the command is printed), a
# virtualenv in .venv, and the compiled extensions.
PYTHON   ?= python3
VENV     ?= .venv
PY       := $(VENV)/bin/python
PIP      := $(PY) -m pip
DURATION ?=
CONFIG   ?= netprobe/config/default.toml
PYTEST_ARGS ?=
BENCH_ARGS  ?=

# Debian packages: to build (BUILD_DEBS), for the tests' oracles and lab (TEST_DEBS), and the
# benchmarks' peer tools (BENCH_DEBS).
BUILD_DEBS := gcc python3-dev python3-venv
TEST_DEBS  := adjtimex cython3 python3-setuptools python3-numpy libpcap0.8 iproute2 iptables ethtool iputils-ping procps irtt iperf3 rsyslog tshark tcptrace tcpdump chromium poppler-utils
BENCH_DEBS := sockperf

.PHONY: all build-deps test-deps bench-deps venv build run test bench lint clean

all: build

build-deps:
	@scripts/ensure-debs $(BUILD_DEBS)

test-deps:
	@scripts/ensure-debs $(BUILD_DEBS) $(TEST_DEBS)

bench-deps:
	@scripts/ensure-debs $(BUILD_DEBS) $(TEST_DEBS) $(BENCH_DEBS)

# The venv is rebuilt when the dependency list changes.
$(VENV)/.deps: pyproject.toml | build-deps
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip setuptools wheel
	$(PIP) install -q "Cython>=3.0" numpy scipy python-daemon pytest hypothesis scapy ruff matplotlib
	touch $@

venv: $(VENV)/.deps

# Editable install: compiles pyx/*.pyx into netprobe/_*.so in place. Redone only when the
# venv, a build file or an extension's source changed, or an extension is missing: a ready
# checkout starts `make run` without pip's ~25 s.
EXTENSIONS  := $(patsubst pyx/%.pyx,%,$(wildcard pyx/*.pyx))
EXT_MISSING := $(strip $(foreach e,$(EXTENSIONS),$(if $(wildcard netprobe/_$(e).*.so),,$(e))))
PYX_SOURCES := $(shell find pyx -name "*.pyx" -o -name "*.pxd" -o -name "*.pxi" -o -name "*.h")
$(VENV)/.built: $(VENV)/.deps setup.py pyproject.toml $(PYX_SOURCES) \
		$(if $(EXT_MISSING),FORCE)
	$(PIP) install -q --no-build-isolation --no-deps -e .
	touch $@

build: $(VENV)/.built

.PHONY: FORCE
FORCE:

# DURATION takes a unit (30s, 2m); a bare number is seconds.
run: build
	$(VENV)/bin/netprobe run -c $(CONFIG) $(if $(DURATION),--duration $(shell echo '$(DURATION)' | sed 's/^[0-9.]*$$/&s/'))

test: test-deps build
	$(PY) -m pytest $(PYTEST_ARGS)

bench: bench-deps build
	$(PY) -m bench $(BENCH_ARGS)

lint: $(VENV)/.deps
	$(VENV)/bin/ruff check netprobe tests bench

# Packaging: the .deb, built offline from Debian 12's own packages (dist/),
# the container image (podman, base made with mmdebstrap; no registry), and
# their tests (chroot install/upgrade/purge, systemd-nspawn boot, podman run).
PACKAGE_DEBS := debhelper dh-python pybuild-plugin-pyproject python3-all-dev python3-setuptools cython3 \
                python3-numpy python3-scipy python3-daemon python3-pytest python3-hypothesis lintian fakeroot help2man \
                build-essential mmdebstrap systemd-container rsyslog podman runc
VERSION      := $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' netprobe/__init__.py)
DEB          := dist/netprobe_$(VERSION)_$(shell dpkg --print-architecture).deb

.PHONY: package-deps deb image test-package

package-deps:
	@scripts/ensure-debs $(PACKAGE_DEBS)

deb: package-deps
	scripts/build-deb dist

image: deb
	scripts/build-image $(DEB)

test-package: package-deps venv
	NETPROBE_PACKAGE_TESTS=1 $(PY) -m pytest tests/package $(PYTEST_ARGS)

clean:
	rm -rf build dist *.egg-info netprobe/_*.so netprobe/_*.c .pytest_cache $(VENV)/.built
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
