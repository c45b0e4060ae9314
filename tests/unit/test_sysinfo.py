"""Host facts: the adjtimex struct layout against the C compiler and adjtimex(8), steal math."""
import ctypes
import re
import shutil
import subprocess

import pytest

from netprobe import sysinfo

TIMEX_FIELDS = [name for name, _ in sysinfo.Timex._fields_ if not name.startswith("_")]


def test_timex_layout_matches_the_c_compiler(tmp_path):
    """sizeof and every field offset of struct timex as gcc sees <sys/timex.h>."""
    gcc = shutil.which("gcc") or pytest.fail("gcc is missing: apt-get install gcc")
    c_names = {"time_sec": "time.tv_sec", "time_usec": "time.tv_usec"}
    lines = [f'printf("{n} %zu\\n", offsetof(struct timex, {c_names.get(n, n)}));'
             for n in TIMEX_FIELDS]
    src = tmp_path / "timex.c"
    src.write_text("#include <stdio.h>\n#include <stddef.h>\n#include <sys/timex.h>\n"
                   "int main(void) {\n" + "\n".join(lines) +
                   '\nprintf("sizeof %zu\\n", sizeof(struct timex));\nreturn 0;\n}\n')
    subprocess.run([gcc, "-o", str(tmp_path / "timex"), str(src)], check=True)
    out = subprocess.run([str(tmp_path / "timex")], capture_output=True, text=True, check=True).stdout
    c = {k: int(v) for k, v in (line.split() for line in out.splitlines())}
    assert c.pop("sizeof") == ctypes.sizeof(sysinfo.Timex)
    assert c == {n: getattr(sysinfo.Timex, n).offset for n in TIMEX_FIELDS}


def test_clock_sync_agrees_with_adjtimex_print():
    tool = shutil.which("adjtimex") or shutil.which("adjtimex", path="/usr/sbin:/sbin")
    if not tool:
        pytest.fail("adjtimex(8) is missing: apt-get install adjtimex")
    printed = subprocess.run([tool, "--print"], capture_output=True, text=True, check=True).stdout
    (state, tx), why = sysinfo.read_adjtimex()
    assert why is None
    p = dict(re.findall(r"^\s*([a-z_ ]+?)\s*[:=]\s*(-?\d+)", printed, re.MULTILINE))
    assert int(p["return value"]) == state
    assert int(p["status"]) == tx.status
    for key, field in [("tick", "tick"), ("precision", "precision"), ("tolerance", "tolerance"),
                       ("time_constant", "constant"), ("mode", "modes")]:
        assert int(p[key]) == getattr(tx, field), key
    # the error bounds grow by 500 ppm per second while unsynced: allow the gap between calls
    assert abs(int(p["maxerror"]) - tx.maxerror) <= 1000
    assert abs(int(p["esterror"]) - tx.esterror) <= 1000
    sync, why = sysinfo.clock_sync()
    assert why is None
    assert sync["synced"] == (state != sysinfo.TIME_ERROR and not tx.status & sysinfo.STA_UNSYNC)
    assert ("STA_UNSYNC" in sync["status_bits"]) == bool(tx.status & sysinfo.STA_UNSYNC)


def test_facts_are_complete_and_json_friendly():
    import json
    f = sysinfo.facts()
    for key in ("hostname", "kernel", "clocksource", "python", "netprobe", "cpu_count"):
        assert key in f
    assert f["kernel"] and f["cpu_count"] >= 1
    json.dumps(f)


def test_missing_facts_give_reasons_not_exceptions(monkeypatch):
    monkeypatch.setattr(sysinfo, "CLOCKSOURCE_PATH", "/nonexistent/clocksource")
    value, why = sysinfo.clocksource()
    assert value is None and "/nonexistent/clocksource" in why
    assert sysinfo.facts()["unavailable"]["clocksource"] == why


def test_steal_meter_percent_between_samples():
    samples = iter([((1000, 10), None), ((1200, 30), None), ((1200, 30), None),
                    (None, "cannot read /proc/stat")])
    meter = sysinfo.CpuStealMeter(reader=lambda: next(samples))
    assert meter.sample() == (10.0, None)                 # 20 of 200 ticks stolen
    assert meter.sample()[0] is None                      # no time passed
    assert meter.sample() == (None, "cannot read /proc/stat")


def test_steal_meter_reads_proc_stat():
    (total, steal), why = sysinfo.read_cpu_times()
    assert why is None and total > 0 and 0 <= steal <= total
    value, why = sysinfo.CpuStealMeter().sample()
    assert why is not None or 0.0 <= value <= 100.0
