"""The container image (container/Containerfile, built by scripts/build-image
with podman from the .deb): small, no build tools, non-root, a loopback
probe inside, the daemon's health check and a clean stop."""
import json
import os
import re
import time
import uuid

import pytest

from tests.package.conftest import ROOT
from tests.package.rootfs import run

PODMAN = str(ROOT / "scripts" / "podman")
SIZE_MAX_MB = 300            # 0.1.0 measured 236 MB (printed by the image fixture)


def podman(*args, check=True, timeout=300):
    return run([PODMAN, *args], check=check, timeout=timeout)


@pytest.fixture(scope="session")
def image(deb, base_tarball, version, timed):
    tag = f"localhost/netprobe:{version}-test"
    env = dict(os.environ, NETPROBE_PACKAGE_CACHE=str(base_tarball.parent))
    with timed("image: scripts/build-image (podman build from the .deb)"):
        run([str(ROOT / "scripts" / "build-image"), str(deb), tag], timeout=1800, env=env)
    size = int(podman("image", "inspect", "--format", "{{.Size}}", tag).stdout)
    print(f"{tag}: {size / 1e6:.0f} MB")
    yield tag, size
    podman("rmi", "-f", tag, check=False)


def test_image_is_small_and_holds_no_build_tools(image):
    tag, size = image
    assert size / 1e6 <= SIZE_MAX_MB, f"{size / 1e6:.0f} MB"
    pkgs = podman("run", "--rm", "--network", "none", "--entrypoint", "dpkg-query", tag,
                  "-W", "-f", "${Package}\\n").stdout.split()
    assert "netprobe" in pkgs and "python3-numpy" in pkgs
    assert [p for p in pkgs if p.endswith("-dev")] == []
    found = podman("run", "--rm", "--network", "none", "--entrypoint", "/bin/sh", tag, "-c",
                   "for t in cc gcc g++ c++ cpp ld as make cython cython3 pip pip3; do command -v $t; done",
                   check=False).stdout
    assert found == "", found
    info = json.loads(podman("image", "inspect", tag).stdout)[0]
    assert info["Config"]["User"] == "netprobe"
    assert info["Config"]["Entrypoint"] == ["/usr/bin/netprobe"]
    health = info.get("Healthcheck") or {}
    assert "/var/lib/netprobe/results.jsonl" in " ".join(health.get("Test", [])), info


def test_loopback_throughput_probe_inside(image, version, timed):
    """No network but loopback (--network none): serve and probe in one container, as the image's user."""
    tag, _ = image
    script = ("id -un; netprobe --version; netprobe serve --listen 127.0.0.1:7171 & srv=$!; sleep 1; rc=0; "
              "netprobe probe throughput --peer 127.0.0.1:7171 --rate 50M --interval 1s --window 2s "
              "--duration 5s --json || rc=$?; kill $srv; wait $srv || true; exit $rc")
    with timed("podman run: 5 s loopback throughput probe in the image"):
        out = podman("run", "--rm", "--network", "none", "--entrypoint", "/bin/sh", tag, "-c", script,
                     timeout=120).stdout.splitlines()
    assert out[:2] == ["netprobe", f"netprobe {version}"], out[:2]
    recs = [json.loads(line) for line in out if line.startswith("{")]
    assert not [r for r in recs if r["type"] == "ERROR"], recs
    for direction in ("a->b", "b->a"):
        rates = [r["rate"] for r in recs if r["type"] == "RESULT" and r["dir"] == direction and "rate" in r][:-1]
        assert rates, recs
        assert all(0.5 * 50e6 <= r <= 1.1 * 50e6 for r in rates), (direction, rates)   # as in test_deb


def _health(name):
    return podman("healthcheck", "run", name, check=False)


def test_daemon_is_healthy_while_records_flow_and_stops_cleanly(image, timed):
    """The health check is the freshness of the jsonfile sink's file: the run
    header makes it healthy at start, each record keeps it so; a file left
    untouched for 60 s (a stuck daemon) is unhealthy."""
    tag, _ = image
    name = f"netprobe-test-{uuid.uuid4().hex[:8]}"
    try:
        podman("run", "-d", "--name", name, "--network", "none", tag)
        t0 = time.monotonic()
        with timed("podman: daemon container healthy"):
            end = t0 + 30
            while _health(name).returncode != 0:
                assert time.monotonic() < end, podman("logs", name, check=False).stderr[-3000:]
                time.sleep(0.5)
        # the host probe's first record comes 10 s after start: until then the file ages as it is
        assert time.monotonic() - t0 < 8, "too slow to test staleness before the first record"
        podman("exec", name, "touch", "-d", "-5 minutes", "/var/lib/netprobe/results.jsonl")
        assert _health(name).returncode != 0, "a file 5 minutes old passes the health check"
        end = time.monotonic() + 30
        while _health(name).returncode != 0:         # the first record refreshes it
            assert time.monotonic() < end, podman("logs", name, check=False).stderr[-3000:]
            time.sleep(1)
        logs = podman("logs", name)
        assert re.search(r"RESULT probe=host name=self ", logs.stdout), logs.stdout + logs.stderr
        assert podman("exec", name, "id", "-u").stdout.strip() != "0"
        with timed("podman stop (SIGTERM: final interval, exit 0)"):
            podman("stop", "-t", "15", name)
        state = json.loads(podman("inspect", name).stdout)[0]["State"]
        assert state["ExitCode"] == 0, state
        assert podman("logs", name).stdout.count("RESULT probe=host") >= 2, "the final interval was written"
    finally:
        podman("rm", "-f", name, check=False)
