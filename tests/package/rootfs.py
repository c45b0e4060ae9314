"""Debian 12 root file systems for the package tests: build, chroot, boot.

`base_tarball` makes a bookworm minbase with python3 (scripts/mkbase, from
deb.debian.org; the same tarball is the container image's base), `Rootfs`
unpacks one and runs commands in it with /proc, /sys and /dev mounted, and
`Boot` runs its systemd under systemd-nspawn and enters it with nsenter.
"""
import contextlib
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

SUITE = "bookworm"
APT_ENV = {"DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C.UTF-8",
           "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
# What dpkg may leave behind by design: its own database, apt's cache and logs,
# /etc/passwd- style backups shadow's tools write, and ld.so's cache.
STATE_PREFIXES = ("/var/lib/dpkg/", "/var/lib/apt/", "/var/cache/", "/var/log/",
                  "/var/lib/systemd/deb-systemd-helper-enabled/", "/etc/ld.so.cache")


def run(cmd, *, timeout=600, check=True, **kw):
    """Run `cmd`; on failure raise with its output (the tests show it)."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, cmd))} exited {proc.returncode}:\n"
                             f"{proc.stdout[-4000:]}{proc.stderr[-4000:]}")
    return proc


def base_tarball(path):
    """A bookworm minbase + python3 tarball at `path` (scripts/mkbase; kept: a second run reuses it)."""
    path = Path(path)
    if not path.exists():
        run([str(Path(__file__).resolve().parents[2] / "scripts" / "mkbase"), str(path)], timeout=900)
    return path


class Rootfs:
    """An unpacked root file system; `sh()` runs a shell command chrooted in it."""

    def __init__(self, path, tarball):
        self.path = Path(path)
        self.path.mkdir(parents=True)
        run(["tar", "-C", str(self.path), "--numeric-owner", "-xf", str(tarball)])
        self.mounts = []

    def mount(self):
        for fs, target, opts in (("proc", "proc", []), ("sysfs", "sys", ["-o", "ro"]),
                                 ("/dev", "dev", ["--rbind"])):
            dst = self.path / target
            if fs.startswith("/"):
                run(["mount", *opts, fs, str(dst)])
            else:
                run(["mount", "-t", fs, *opts, fs, str(dst)])
            self.mounts.append(dst)
        run(["mount", "--make-rslave", str(self.path / "dev")])

    def umount(self):
        while self.mounts:
            run(["umount", "-R", "-l", str(self.mounts.pop())], check=False)

    def sh(self, script, *, timeout=600, check=True):
        return run(["chroot", str(self.path), "/bin/sh", "-ec", script], env=APT_ENV, timeout=timeout,
                   check=check)

    def put(self, text, dest, mode=0o644):
        p = self.path / dest.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
        p.chmod(mode)
        return p

    def snapshot(self):
        """Every path in the tree (API file systems and /tmp left out)."""
        out = set()
        root = str(self.path)
        for d, dirs, files in os.walk(root):
            rel = d[len(root):] or "/"
            if rel in ("/proc", "/sys", "/dev", "/tmp", "/run"):
                dirs[:] = []
                continue
            out.update(os.path.join(d, n)[len(root):] for n in dirs + files)
        return out

    def remove(self):
        self.umount()
        shutil.rmtree(self.path, ignore_errors=True)


class Boot:
    """`systemd-nspawn -b` of a rootfs; `sh()` runs a command inside it (nsenter)."""

    def __init__(self, rootfs, log, *, extra=()):
        self.rootfs = rootfs
        self.log = log
        self.extra = list(extra)
        self.proc = None
        self.pid1 = None

    def __enter__(self):
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen(
                ["systemd-nspawn", "-D", str(self.rootfs.path), "--register=no", "--keep-unit", "-b",
                 "--console=read-only", *self.extra],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            self.pid1 = self._wait_pid1()
            self.wait_running()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _wait_pid1(self, timeout=60):
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            assert self.proc.poll() is None, f"systemd-nspawn exited:\n{Path(self.log).read_text()[-3000:]}"
            kids = run(["pgrep", "-P", str(self.proc.pid), "-x", "systemd"], check=False).stdout.split()
            if kids:
                return int(kids[0])
            time.sleep(0.1)
        raise AssertionError(f"no systemd in the container after {timeout}s:\n{Path(self.log).read_text()}")

    def sh(self, script, *, timeout=120, check=True):
        return run(["nsenter", "-t", str(self.pid1), "-a", "/bin/sh", "-c", script], timeout=timeout,
                   check=check, env=APT_ENV)

    def wait_running(self, timeout=120):
        """Until `systemctl is-system-running` settles; returns its state (running / degraded)."""
        end = time.monotonic() + timeout
        while True:
            got = self.sh("systemctl is-system-running", check=False)
            state = got.stdout.strip()
            if state in ("running", "degraded"):
                return state
            assert self.proc.poll() is None, f"systemd-nspawn exited:\n{Path(self.log).read_text()[-3000:]}"
            assert time.monotonic() < end, f"system state {state!r} after {timeout}s: {got.stderr}"
            time.sleep(0.2)

    def show(self, unit, *props):
        out = self.sh(f"systemctl show {unit} " + " ".join(f"-p {p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def __exit__(self, *exc):
        if self.proc is None:
            return
        if self.pid1 is not None and self.proc.poll() is None:
            self.sh("systemctl poweroff", check=False)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=30)
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
