"""Fixtures of the package tests (`make test-package`): the .deb, a Debian 12
root file system with it installable, and the time each step took.

These tests build and install the package, boot systemd in a container and
build an image: minutes, root, and deb.debian.org. `make test` does not
collect them; `make test-package` sets NETPROBE_PACKAGE_TESTS=1. Inputs:

  NETPROBE_DEB            the .deb to test (default: built by scripts/build-deb)
  NETPROBE_PACKAGE_CACHE  where the debootstrapped base tarball is kept between
                          runs (default: build/package)
"""
import os
import re
import shutil
import time
from pathlib import Path

import pytest

from tests.package import rootfs

ROOT = Path(__file__).resolve().parents[2]

if os.environ.get("NETPROBE_PACKAGE_TESTS") != "1":
    collect_ignore_glob = ["test_*.py"]

TIMES = []          # (step, seconds), printed at the end of the session


@pytest.fixture(scope="session")
def timed():
    """timed(step) is a context manager that records how long the step took."""
    class _Timer:
        def __init__(self, step):
            self.step = step

        def __enter__(self):
            self.t0 = time.monotonic()

        def __exit__(self, *exc):
            TIMES.append((self.step, time.monotonic() - self.t0))
    return _Timer


def pytest_terminal_summary(terminalreporter):
    if TIMES:
        terminalreporter.section("package test steps")
        for step, secs in TIMES:
            terminalreporter.write_line(f"{secs:7.1f} s  {step}")


def _need_tools():
    if os.geteuid() != 0:
        pytest.fail("package tests need root (chroot, mount, systemd-nspawn)", pytrace=False)
    missing = [t for t in ("mmdebstrap", "systemd-nspawn", "dpkg-buildpackage", "lintian")
               if shutil.which(t, path="/usr/sbin:/usr/bin:/sbin:/bin") is None]
    if missing:
        pytest.fail(f"missing {', '.join(missing)}: run `make package-deps`", pytrace=False)


@pytest.fixture(scope="session")
def deb(tmp_path_factory, timed):
    """Path of the netprobe .deb under test."""
    _need_tools()
    given = os.environ.get("NETPROBE_DEB")
    if given:
        return Path(given).resolve()
    out = tmp_path_factory.mktemp("dist")
    with timed("build the .deb (scripts/build-deb: dpkg-buildpackage + lintian)"):
        rootfs.run([str(ROOT / "scripts" / "build-deb"), str(out)], timeout=1800)
    (path,) = out.glob("netprobe_*.deb")
    return path


@pytest.fixture(scope="session")
def version():
    text = (ROOT / "netprobe" / "__init__.py").read_text()
    return re.search(r'__version__ = "([^"]+)"', text).group(1)


@pytest.fixture(scope="session")
def base_tarball(timed):
    _need_tools()
    cache = Path(os.environ.get("NETPROBE_PACKAGE_CACHE", ROOT / "build" / "package"))
    path = cache / f"{rootfs.SUITE}-minbase.tar"
    step = "base tarball: cached" if path.exists() else "base tarball: mmdebstrap bookworm minbase + python3"
    with timed(step):
        return rootfs.base_tarball(path)


@pytest.fixture(scope="session")
def system(tmp_path_factory, base_tarball, deb, timed):
    """A rootfs with systemd, dbus, rsyslog and the .deb's dependencies, but not
    the .deb itself (the tests install it); the .deb is in /tmp."""
    with timed("rootfs: unpack the base, apt-get install systemd dbus rsyslog + dependencies"):
        fs = rootfs.Rootfs(tmp_path_factory.mktemp("rootfs") / "root", base_tarball)
        try:
            fs.mount()
            shutil.copy(deb, fs.path / "tmp" / deb.name)
            deps = dependencies(deb)
            fs.sh("apt-get update -q && apt-get install -y -q --no-install-recommends "
                  f"systemd systemd-sysv dbus rsyslog {' '.join(deps)}", timeout=1200)
        except BaseException:
            fs.remove()
            raise
    fs.deb = f"/tmp/{deb.name}"
    yield fs
    fs.remove()


def dependencies(deb):
    """Package names in the .deb's Depends (first of each alternative, versions dropped)."""
    field = rootfs.run(["dpkg-deb", "-f", str(deb), "Depends"]).stdout
    names = []
    for dep in field.split(","):
        name = dep.split("|")[0].split("(")[0].strip().split(":")[0]
        if name and name not in names:
            names.append(name)
    return names
