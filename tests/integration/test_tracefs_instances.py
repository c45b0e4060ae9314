"""tracefs instances shared by every PID namespace on the host (root, real instances).

Which instances a start removes as stale, and that it never disturbs one that
may be another daemon's: the oracles are the instances directory, the
kernel's own enable files of the planted instances, and real processes in
our namespace and in a PID namespace of their own (unshare --pid --fork
--mount-proc, as a container has). Every instance a test plants is removed
afterwards, even on failure.
"""
import os
import subprocess
import sys
import time

import pytest

from netprobe.probes.retrans import tracefs
from tests.conftest import IS_ROOT, NOT_ROOT_REASON

pytestmark = pytest.mark.skipif(not IS_ROOT, reason=NOT_ROOT_REASON)
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENABLE = os.path.join("events", "tcp", "tcp_retransmit_skb", "enable")


@pytest.fixture
def instances():
    """The instances directory; whatever the test leaves there is removed afterwards."""
    inst = os.path.join(tracefs.find_root(), "instances")
    before = set(os.listdir(inst))
    yield inst
    for name in set(os.listdir(inst)) - before:
        for _ in range(50):                     # a reader the test started may still be exiting
            try:
                os.rmdir(os.path.join(inst, name))
                break
            except FileNotFoundError:
                break
            except OSError:
                time.sleep(0.1)


def plant(inst, name):
    """An instance with an event enabled, as a running daemon's would be."""
    path = os.path.join(inst, name)
    os.mkdir(path)
    with open(os.path.join(path, ENABLE), "w") as f:
        f.write("1")
    return path


def enabled(path):
    with open(os.path.join(path, ENABLE)) as f:
        return f.read().strip() == "1"


def test_name_carries_namespace_pid_and_start_time(instances):
    inst = tracefs.Instance("t", buffer_kb=64)
    try:
        ns = os.stat("/proc/self/ns/pid").st_ino
        with open("/proc/self/stat") as f:
            start = f.read().rsplit(")", 1)[1].split()[19]
        assert inst.name == f"netprobe-{ns}.{os.getpid()}.{start}-t"
        assert os.path.isdir(os.path.join(instances, inst.name))
    finally:
        inst.close()
    assert not os.path.exists(os.path.join(instances, inst.name))


def test_own_namespace_dead_owner_removed_live_and_reused_pid_kept_apart(instances):
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        alive_token = tracefs.owner_token(sleeper.pid)
        dead = subprocess.Popen(["sleep", "60"])
        dead_token = tracefs.owner_token(dead.pid)
        dead.kill()
        dead.wait()
        ns, pid, start = alive_token.split(".")
        reused = f"{ns}.{pid}.{int(start) - 1}"     # same pid, earlier start: the pid was reused
        paths = {t: plant(instances, f"netprobe-{t}-x") for t in (alive_token, dead_token, reused)}
        inst = tracefs.Instance("t", buffer_kb=64)
        inst.close()
        assert sorted(inst.stale_removed) == sorted([f"netprobe-{dead_token}-x", f"netprobe-{reused}-x"])
        assert os.path.isdir(paths[alive_token]) and enabled(paths[alive_token])
        assert not os.path.exists(paths[dead_token]) and not os.path.exists(paths[reused])
    finally:
        sleeper.kill()
        sleeper.wait()


def test_an_instance_being_read_is_never_removed_or_disabled(instances):
    """rmdir first: a dead-looking owner whose trace_pipe is still open (another daemon reads it)
    keeps its instance and its enabled events; nothing is written into it."""
    dead = subprocess.Popen(["sleep", "60"])
    token = tracefs.owner_token(dead.pid)
    dead.kill()
    dead.wait()
    path = plant(instances, f"netprobe-{token}-busy")
    fd = os.open(os.path.join(path, "trace_pipe"), os.O_RDONLY | os.O_NONBLOCK)
    try:
        inst = tracefs.Instance("t", buffer_kb=64)
        inst.close()
        assert f"netprobe-{token}-busy" not in inst.stale_removed
        assert os.path.isdir(path) and enabled(path)
    finally:
        os.close(fd)


CONTAINER = """
import sys
from netprobe.probes.retrans import tracefs
inst = tracefs.Instance("ctr", buffer_kb=64)
print(inst.name, flush=True)
sys.stdin.readline()
inst.close()
"""


def test_other_pid_namespace_is_judged_by_its_liveness_not_by_kill(instances):
    """A daemon in a PID namespace of its own (pid 1 or 2 there: those pids exist here too, and a
    kill(pid, 0) here says nothing about them) keeps its instance while its namespace lives; once
    the namespace is gone a start in the initial namespace removes the instance. An instance
    named for a namespace that is alive but whose owner pid is gone inside it is left to that
    namespace (we cannot see which of its pids live)."""
    if tracefs.pid_ns() != tracefs.INIT_PID_NS:
        pytest.skip("needs the initial PID namespace (sees every process)")
    ctr = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", CONTAINER],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        name = ctr.stdout.readline().strip()
        assert name.startswith("netprobe-"), name
        ns = int(name.split("-")[1].split(".")[0])
        assert ns != tracefs.pid_ns()
        ghost = plant(instances, f"netprobe-{ns}.999999.1-ghost")       # its pid does not exist
        path = os.path.join(instances, name)
        ctr_pipe_closed_path = plant(instances, f"netprobe-{ns}.2.{os.getpid()}-idle")   # no reader
        inst = tracefs.Instance("t", buffer_kb=64)
        inst.close()
        assert inst.stale_removed == []
        for p in (path, ghost, ctr_pipe_closed_path):
            assert os.path.isdir(p) and enabled(p), p
    finally:
        ctr.stdin.close()
        ctr.wait(timeout=30)
    assert not os.path.exists(path)            # the container's own daemon removed its instance
    inst = tracefs.Instance("t", buffer_kb=64)  # the namespace is gone: what it left is stale
    inst.close()
    assert sorted(inst.stale_removed) == sorted([os.path.basename(ghost), os.path.basename(ctr_pipe_closed_path)])
