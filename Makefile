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
TEST_DEBS  := adjtimex strace cython3 python3-setuptools python3-numpy libpcap0.8 iproute2 iptables ethtool iputils-ping procps irtt iperf3 rsyslog tshark tcptrace tcpdump \
             prometheus prometheus-alertmanager chromium poppler-utils
BENCH_DEBS := sockperf

.PHONY: all build-deps test-deps bench-deps venv build run test bench soak lint clean

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
	$(PIP) install -q "Cython>=3.0" numpy scipy python-daemon "prometheus-client==0.16.0" pytest hypothesis scapy ruff matplotlib
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

# The 5-minute soak mostly waits: it runs beside the tests that only compute (unit, fuzz,
# reference, bench, the pcap analyser on stored captures: no lab, no timing, nothing on the
# host the soak's leak check looks at), then the rest. Each part's output is printed whole;
# any failure fails `make test`.
CPU_TESTS := tests/unit tests/fuzz tests/reference tests/bench tests/ext/test_pcapread.py \
	tests/ext/test_pcapread_data.py tests/ext/test_wireshark_rules.py
test: test-deps build
	@mkdir -p build; rm -rf build/pytest-soak; \
	$(PY) -m pytest tests/soak -p no:cacheprovider --basetemp=build/pytest-soak $(PYTEST_ARGS) \
		> build/soak-test.log 2>&1 & soak=$$!; \
	trap 'kill $$soak 2>/dev/null' INT TERM; \
	$(PY) -m pytest $(CPU_TESTS) -p no:cacheprovider $(PYTEST_ARGS); cpu=$$?; \
	wait $$soak; soaked=$$?; cat build/soak-test.log; \
	$(PY) -m pytest $(PYTEST_ARGS) --ignore=tests/soak $(addprefix --ignore=,$(CPU_TESTS)); rest=$$?; \
	echo "make test: compute-only tests exit $$cpu, soak exit $$soaked, the rest exit $$rest"; \
	[ $$cpu = 0 ] && [ $$soaked = 0 ] && [ $$rest = 0 ]

# the mesh lab acceptance over 10 cycles (make test runs 2, and 1 after a host joins; root)
.PHONY: test-mesh
test-mesh: test-deps build
	MESH_LAB_CYCLES=10 $(PY) -m pytest tests/integration/test_mesh_lab.py tests/integration/test_mesh_grow.py $(PYTEST_ARGS)

# udping_server under a longer spoofed flood than make test's (1,000,000 sources in 10 min; root)
.PHONY: soak-udping
soak-udping: test-deps build
	UDPING_SPOOF_SOURCES=1000000 UDPING_SPOOF_SECONDS=600 $(PY) -m pytest tests/integration/test_udping_spoof.py $(PYTEST_ARGS)

# the lab's fault-localisation acceptance with all 10 random-member runs and 10 minutes without a
# fault, and 10 random-member and 10 common-part runs of the retrans probe's passive votes (make
# test runs 1, 24 s, 1 and none; root)
.PHONY: test-trace
test-trace: test-deps build
	NETPROBE_TRACE_RUNS=10 NETPROBE_TRACE_QUIET=600 NETPROBE_VOTES_RUNS=10 $(PY) -m pytest \
		tests/integration/test_trace_lab.py tests/integration/test_votes_lab.py \
		tests/integration/test_rawtrace_lab.py $(PYTEST_ARGS)

# every short flow seen with the kernel's destroy messages, 5,000 flows (make test runs 1,000; root)
.PHONY: test-short-flows
test-short-flows: test-deps build
	NETPROBE_SHORT_FLOWS=5000 $(PY) -m pytest tests/integration/test_flows_destroy.py $(PYTEST_ARGS)

# `make bench CHECK=1` (or `make bench-check`) also holds each figure to its target in
# bench/targets.py and fails naming each one missed. `make bench --check` works too: make reads
# --check as its own --check-symlink-times (-L), which is taken here to mean CHECK=1.
# BENCH_ARGS picks benches and options, e.g. BENCH_ARGS="mesh timer --quick".
CHECK ?= $(if $(findstring L,$(firstword -$(MAKEFLAGS))),1)

bench: bench-deps build
	$(PY) -m bench $(if $(CHECK),--check) $(BENCH_ARGS)

.PHONY: bench-check
bench-check: bench-deps build
	$(PY) -m bench --check $(BENCH_ARGS)

# The structured fuzzers and the capture byte fuzzers at full count, 200,000 examples per target
# (`make test` runs each file's CI count; tests/fuzz/__init__.py): TCP segment sequences and pcap
# files against the reference analyser, netlink messages against the reference decoder, the
# oneway receivers against the reference receiver, ICMP errors against what scapy built. One part: `make fuzz-capture`, `fuzz-netlink`,
# `fuzz-oneway`.
FUZZ_CAPTURE = tests/fuzz/test_tcpseq_fuzz.py tests/fuzz/test_pcap_fuzz.py
FUZZ_NETLINK = tests/fuzz/test_nldiag_fuzz.py
FUZZ_ONEWAY = tests/fuzz/test_oneway_stateful.py
FUZZ_TRACE = tests/fuzz/test_tcptrace_fuzz.py
.PHONY: fuzz fuzz-capture fuzz-netlink fuzz-oneway
fuzz: test-deps build
	NETPROBE_FUZZ=full $(PY) -m pytest $(FUZZ_CAPTURE) $(FUZZ_NETLINK) $(FUZZ_ONEWAY) $(FUZZ_TRACE) -q $(PYTEST_ARGS)
fuzz-capture: test-deps build
	NETPROBE_FUZZ=full $(PY) -m pytest $(FUZZ_CAPTURE) -q $(PYTEST_ARGS)
fuzz-netlink: test-deps build
	NETPROBE_FUZZ=full $(PY) -m pytest $(FUZZ_NETLINK) -q -k structured $(PYTEST_ARGS)
fuzz-oneway: test-deps build
	NETPROBE_FUZZ=full $(PY) -m pytest $(FUZZ_ONEWAY) -q $(PYTEST_ARGS)

# Every probe kind in the lab under injected faults, then the verdict (root): SOAK=2h by
# default; `make test` runs the 5-minute version.
SOAK ?= 2h
soak: test-deps build
	$(PY) -m tests.soak.soak --duration $(SOAK) --json soak-verdict.json

lint: $(VENV)/.deps
	$(VENV)/bin/ruff check netprobe tests bench

# Packaging: the .deb, built offline from Debian 12's own packages (dist/),
# the container image (podman, base made with mmdebstrap; no registry), and
# their tests (chroot install/upgrade/purge, systemd-nspawn boot, podman run).
PACKAGE_DEBS := debhelper dh-python pybuild-plugin-pyproject python3-all-dev python3-setuptools cython3 \
                python3-numpy python3-scipy python3-daemon python3-prometheus-client python3-pytest python3-hypothesis python3-scapy lintian fakeroot help2man \
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
