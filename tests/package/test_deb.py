"""The .deb: contents, lintian, install / upgrade over itself / purge in a
Debian 12 chroot, the installed command, and the unit files as systemd
reads them, and the unit tests on the .deb's files with Debian's numpy."""
import json
import re
import shutil
import socket

import pytest

from tests.package.conftest import ROOT
from tests.package.rootfs import STATE_PREFIXES, run

UNITS = ("netprobe.service", "netprobe-peer.service")
CONFFILES = {"/etc/netprobe/netprobe.toml", "/etc/netprobe/peer.toml"}
EXPOSURE_MAX = 4.0          # systemd-analyze security: "OK" up to here


def setup_py_extensions():
    """The extensions setup.py builds: every top-level pyx/*.pyx (pyx/<mechanism>/ holds included files)."""
    return sorted(p.stem for p in (ROOT / "pyx").glob("*.pyx"))


def test_deb_contents(deb):
    files = [line.split()[-1].lstrip(".") for line in run(["dpkg-deb", "-c", str(deb)]).stdout.splitlines()]
    site = "/usr/lib/python3/dist-packages/netprobe/"
    built = {f[len(site) + 1:].split(".")[0] for f in files if f.startswith(site + "_") and f.endswith(".so")}
    assert built == set(setup_py_extensions()), "one extension per setup.py EXTENSIONS entry"
    for path in ("/usr/bin/netprobe", "/usr/share/man/man1/netprobe.1.gz",
                 "/usr/share/doc/netprobe/examples/rsyslog-netprobe.conf",
                 *(f"/lib/systemd/system/{u}" for u in UNITS), *CONFFILES):
        assert path in files, path
    for doc in ("syslog.md", "deploy.md"):          # dh_compress gzips docs above 4 kB
        assert {f"/usr/share/doc/netprobe/{doc}", f"/usr/share/doc/netprobe/{doc}.gz"} & set(files), doc
    commands = [f for f in files if f.startswith("/usr/bin/") and f != "/usr/bin/"]
    assert "/usr/bin/netprobe" in commands
    for command in commands:
        assert f"/usr/share/man/man1/{command[9:]}.1.gz" in files, f"{command} has a man page"
    leaked = [f for f in files if f.endswith((".pyx", ".pxd", ".c")) or "/tests/" in f]
    assert not leaked, leaked
    # the unit files are the ones in systemd/, byte for byte
    for unit in UNITS:
        shipped = run(["sh", "-c", f"dpkg-deb --fsys-tarfile {deb} | tar -xOf - ./lib/systemd/system/{unit}"])
        assert shipped.stdout == (ROOT / "systemd" / unit).read_text()
    ctl = run(["sh", "-c", f"dpkg-deb --ctrl-tarfile {deb} | tar -xOf - ./conffiles"]).stdout
    assert set(ctl.split()) == CONFFILES


def test_lintian_clean(deb, timed):
    with timed("lintian -I --pedantic on the .deb"):
        proc = run(["lintian", "-I", "--pedantic", "--fail-on", "warning", "--tag-display-limit", "0",
                    str(deb)], check=False)
    tags = [line for line in proc.stdout.splitlines() if re.match(r"^[EWIPX]: ", line)]
    assert proc.returncode == 0 and not tags, proc.stdout + proc.stderr


def test_install_upgrade_over_itself_and_purge_leave_nothing(system, timed):
    system.sh("if dpkg -s netprobe >/dev/null 2>&1; then dpkg --purge netprobe; fi")   # other tests install it
    before = system.snapshot()
    with timed("chroot: apt-get install ./netprobe.deb"):
        system.sh(f"apt-get install -y -q --no-install-recommends {system.deb}")
    user = system.sh("getent passwd netprobe").stdout.split(":")
    assert int(user[2]) < 1000 and user[6].strip() == "/usr/sbin/nologin", user     # a system user
    assert (system.path / "etc/systemd/system/multi-user.target.wants/netprobe.service").is_symlink()
    assert not (system.path / "etc/systemd/system/multi-user.target.wants/netprobe-peer.service").exists()
    conf = system.path / "etc/netprobe/netprobe.toml"
    peer_mode = "stat -c '%a %U:%G' /etc/netprobe/peer.toml"
    assert system.sh(peer_mode).stdout.strip() == "640 root:netprobe"     # it may hold the peer's key
    with timed("chroot: dpkg -i the same .deb again (upgrade over itself)"):
        system.sh(f"dpkg -i {system.deb}")
    assert system.sh("dpkg-query -W -f '${Status}' netprobe").stdout == "install ok installed"
    assert system.sh("getent passwd netprobe").stdout.split(":")[2] == user[2], "the user is kept"
    assert system.sh(peer_mode).stdout.strip() == "640 root:netprobe"
    with timed("chroot: dpkg --purge netprobe"):
        system.sh("dpkg --purge netprobe")
    after = system.snapshot()
    assert not conf.exists()
    assert system.sh("getent passwd netprobe; getent group netprobe", check=False).stdout == ""
    added = sorted(p for p in after - before if not p.startswith(STATE_PREFIXES))
    removed = sorted(before - after)
    assert (added, removed) == ([], []), f"left behind: {added}; removed: {removed}"
    named = sorted(p for p in after if "netprobe" in p and not p.startswith(STATE_PREFIXES))
    assert named == [], named


@pytest.fixture(scope="module")
def installed(system):
    system.sh(f"dpkg -s netprobe >/dev/null 2>&1 || apt-get install -y -q --no-install-recommends {system.deb}")
    return system


def test_installed_command_and_a_loopback_throughput_probe(installed, version, timed):
    """From the installed files only (Debian's python3, numpy, scipy; the
    compiled extension from the .deb), as the netprobe user."""
    assert installed.sh("netprobe --version").stdout == f"netprobe {version}\n"
    where = installed.sh("cd / && python3 -c 'import netprobe._pacer as p; print(p.__file__)'").stdout
    assert where.startswith("/usr/lib/python3/dist-packages/netprobe/_pacer.")
    # Every module imports with only the declared dependencies installed (no scipy: see debian/rules).
    assert installed.sh("python3 -c 'import scipy'", check=False).returncode != 0
    imported = installed.sh(
        "cd / && python3 -c 'import importlib, pkgutil, netprobe\n"
        "names = [m.name for m in pkgutil.walk_packages(netprobe.__path__, \"netprobe.\")\n"
        "         if not m.name.endswith(\"__main__\")]\n"
        "[importlib.import_module(n) for n in names]\nprint(len(names))'").stdout
    assert int(imported) > 20
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    as_user = "setpriv --reuid=netprobe --regid=netprobe --init-groups --no-new-privs"
    with timed("chroot: 5 s loopback throughput probe at 50 Mbit/s against `netprobe serve`"):
        proc = installed.sh(
            f"{as_user} netprobe serve --listen 127.0.0.1:{port} & srv=$!; sleep 1; rc=0; "
            f"{as_user} netprobe probe throughput --peer 127.0.0.1:{port} --rate 50M "
            f"--interval 1s --window 2s --duration 5s --json || rc=$?; "
            "kill $srv; wait $srv || true; exit $rc", timeout=60)
    recs = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert not [r for r in recs if r["type"] == "ERROR"], recs
    for direction in ("a->b", "b->a"):
        # intervals with samples, the final partial one left out
        rates = [r["rate"] for r in recs if r["type"] == "RESULT" and r["dir"] == direction and "rate" in r][:-1]
        assert rates, recs
        # the configured rate is the oracle: the paced sender never exceeds it by
        # more than its bucket; on a loaded shared host it may fall behind
        assert all(0.5 * 50e6 <= r <= 1.1 * 50e6 for r in rates), (direction, rates)


def test_units_verify_cleanly_and_exposure_is_ok(installed, timed):
    paths = " ".join(f"/lib/systemd/system/{u}" for u in UNITS)
    with timed("systemd-analyze verify + security --offline=yes"):
        # --man=no: the chroot has no man-db (the man page's presence is checked in test_deb_contents)
        verify = installed.sh(f"systemd-analyze verify --man=no {paths}", check=False)
        assert (verify.returncode, verify.stdout, verify.stderr) == (0, "", "")
        for unit in UNITS:
            sec = installed.sh(f"systemd-analyze security --offline=yes --no-pager {unit}", check=False)
            m = re.search(rf"Overall exposure level for {re.escape(unit)}: ([0-9.]+) (\w+)", sec.stdout)
            assert m, sec.stdout + sec.stderr
            print(f"{unit}: exposure {m.group(1)} {m.group(2)}")
            assert float(m.group(1)) <= EXPOSURE_MAX and m.group(2) == "OK", sec.stdout


def test_unit_tests_pass_on_the_deb_with_debian_numpy_and_scipy(deb, tmp_path, timed):
    """tests/unit against the .deb's files and Debian 12's python3, numpy and
    scipy (the versions the package depends on), not the venv's."""
    run(["dpkg-deb", "-x", str(deb), str(tmp_path / "root")])
    site = tmp_path / "root/usr/lib/python3/dist-packages"
    shutil.copytree(ROOT / "tests", tmp_path / "t" / "tests", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "contrib", tmp_path / "t" / "contrib")   # the rules the rule tests check
    # the shipped config files the tests read from the source tree's place; without an
    # __init__.py this netprobe/ is a namespace portion, so the .deb's package still wins
    shutil.copytree(ROOT / "netprobe", tmp_path / "t" / "netprobe",
                    ignore=shutil.ignore_patterns("*.py", "*.so", "*.c", "__pycache__"))
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYTHONPATH": str(site), "LC_ALL": "C.UTF-8"}
    where = run(["/usr/bin/python3", "-c", "import netprobe, numpy; print(netprobe.__file__, numpy.__version__)"],
                cwd=tmp_path / "t", env=env).stdout.split()
    assert where[0].startswith(str(site)) and where[1].startswith("1.24."), where
    with timed("tests/unit on the .deb's files with Debian's python3/numpy/scipy"):
        proc = run(["/usr/bin/python3", "-m", "pytest", "tests/unit", "-q", "-p", "no:cacheprovider"],
                   cwd=tmp_path / "t", env=env, check=False, timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
