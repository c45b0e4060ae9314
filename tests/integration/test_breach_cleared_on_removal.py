"""A breach whose probe (or shared-worker peer) a reload removes is CLEARed: nothing measures it
any more, and an alert must not stay active until some later run. The condition is injected:
one peer address has nothing listening (connection BREACH), the other has `netprobe serve`."""
import json
import signal
import subprocess
import sys
import threading
import time

from tests.integration.test_oneway import ROOT, free_port, netprobe, wait_listening


def _config(path, up, down, keep):
    fleet = [f'"up=127.0.0.1:{up}"'] + ([f'"down=127.0.0.1:{down}"'] if keep else [])
    single = f"""
[[probe]]
kind = "oneway"
name = "single"
peer = "127.0.0.1:{down}"
interval = "1s"
connect_timeout = "500ms"
""" if keep else ""
    path.write_text(f"""
[daemon]
stop_timeout = "10s"

[[probe]]
kind = "oneway"
name = "fleet"
peers = [{", ".join(fleet)}]
interval = "1s"
connect_timeout = "500ms"
{single}
[output.stdout]
format = "json"
""")


def test_removed_probe_and_removed_peer_clear_their_breaches(tmp_path):
    up, down = free_port(), free_port()
    serve = subprocess.Popen(netprobe("serve", "--listen", f"127.0.0.1:{up}", "--duration", "60s"), cwd=ROOT,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cfg = tmp_path / "np.toml"
    _config(cfg, up, down, keep=True)
    proc = None
    try:
        wait_listening("127.0.0.1", up)
        proc = subprocess.Popen([sys.executable, "-m", "netprobe", "run", "-c", str(cfg)], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        recs = []
        threading.Thread(target=lambda: recs.extend(json.loads(x) for x in proc.stdout if x.startswith("{")),
                         daemon=True).start()

        def seen(typ, name, after=0, timeout=20.0):
            end = time.monotonic() + timeout
            while time.monotonic() < end:
                got = [r for r in list(recs)[after:] if r["type"] == typ and r["name"] == name
                       and r.get("metric") == "connection"]
                if got:
                    return got
                time.sleep(0.1)
            raise AssertionError(f"no {typ} for {name}: {[(r['type'], r['name']) for r in list(recs)[-10:]]}")

        seen("BREACH", "down")
        seen("BREACH", "single")
        mark = len(recs)
        _config(cfg, up, down, keep=False)
        proc.send_signal(signal.SIGHUP)
        (c_peer,) = seen("CLEAR", "down", after=mark, timeout=10)
        (c_probe,) = seen("CLEAR", "single", after=mark, timeout=10)
        time.sleep(1.5)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        for p in (proc, serve):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    assert proc.returncode == 0 and "Traceback" not in err, err
    for c in (c_peer, c_probe):
        assert c["state"] == "stopped" and c["peer"] == f"127.0.0.1:{down}", c
    # the peer that stayed never breached and was never cleared; nothing about the removed ones after
    assert not [r for r in recs if r["name"] == "up" and r["type"] in ("BREACH", "CLEAR")], recs
    for name in ("down", "single"):
        assert [r["type"] for r in recs if r["name"] == name and r["type"] in ("BREACH", "CLEAR")] \
            == ["BREACH", "CLEAR"], (name, recs)
