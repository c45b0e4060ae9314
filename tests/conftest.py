"""Shared pytest fixtures.

Lab fixtures build the A - R - B namespace lab of tests/lab/netlab.py.  They
need root: without it lab tests are skipped (the reason shows in the -ra
summary).  As root a missing tool is a failure naming its apt package, never
a skip, so CI cannot pass by silently testing nothing.
"""
import os

import pytest

from tests.lab import ecmp, netlab

IS_ROOT = os.geteuid() == 0
NOT_ROOT_REASON = "lab tests need root (network namespaces, iptables, tc)"
root_only = pytest.mark.skipif(not IS_ROOT, reason=NOT_ROOT_REASON)


def pytest_collection_modifyitems(items):
    """Tests marked `lab` get the root_only skip."""
    for item in items:
        if item.get_closest_marker("lab"):
            item.add_marker(root_only)


@pytest.fixture(scope="session", autouse=True)
def _lab_stale_cleanup():
    """Remove labs left by a crashed run before the session, and any lab of
    this process still up after it."""
    if IS_ROOT:
        netlab.cleanup_stale()
        ecmp.cleanup_stale()
    yield
    if IS_ROOT:
        netlab.cleanup_stale(mine=True)
        ecmp.cleanup_stale(mine=True)


@pytest.fixture(autouse=True)
def _secrets_stay_with_their_test():
    """Key values a test's config registered for scrubbing (netprobe.redact keeps them for the
    process's life, as the daemon should) are forgotten after the test, so a random key from
    one test is not scrubbed out of another test's expected text."""
    from netprobe import redact
    with redact._lock:
        before = set(redact._secrets)
    yield
    with redact._lock:
        redact._secrets.intersection_update(before)


@pytest.fixture
def make_lab():
    """Factory make_lab(offload="on", mtu=1500, **impairments) -> an up Lab.
    Every lab it made is downed at teardown, whatever the test did."""
    if not IS_ROOT:
        pytest.skip(NOT_ROOT_REASON)
    labs = []

    def make(**kw):
        lab = netlab.Lab()
        labs.append(lab)
        try:
            return lab.up(**kw)
        except netlab.LabError as e:
            pytest.fail(str(e), pytrace=False)

    yield make
    errors = []
    for lab in reversed(labs):
        try:
            lab.down()
        except Exception as e:  # down the others anyway, then report
            errors.append(e)
    if errors:
        raise errors[0]


@pytest.fixture
def lab(request, make_lab):
    """An up Lab without impairments; parametrize indirectly with a dict of
    up() keywords, e.g. {"offload": "off"}."""
    return make_lab(**getattr(request, "param", {}))


@pytest.fixture
def make_ecmp_lab():
    """Factory make_ecmp_lab(stages=1, width=2) -> an up tests.lab.ecmp.EcmpLab, downed at teardown."""
    if not IS_ROOT:
        pytest.skip(NOT_ROOT_REASON)
    labs = []

    def make(**kw):
        labs.append(ecmp.EcmpLab(**kw))
        try:
            return labs[-1].up()
        except netlab.LabError as e:
            pytest.fail(str(e), pytrace=False)

    yield make
    for lab in reversed(labs):
        lab.down()
