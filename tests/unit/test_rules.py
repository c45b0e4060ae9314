"""contrib/: the Prometheus rules pass `promtool check rules` and their own `promtool test rules`,
the Alertmanager route passes `amtool check-config`, and every netprobe metric the rules read
is one that [output.prometheus] exports."""
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from netprobe.outputs.prometheus import RecordCollector
from netprobe.results import BREACH, RESULT, Record, event, percent, rate, seconds

CONTRIB = Path(__file__).resolve().parents[2] / "contrib"
RULES = CONTRIB / "prometheus" / "netprobe.rules.yml"


def _tool(name):
    path = shutil.which(name)
    if path is None and os.geteuid() != 0:
        pytest.skip(f"{name} is installed by make test-deps (as root)")
    assert path, f"{name} missing: apt-get install -y prometheus prometheus-alertmanager"
    return path


def _run(argv, cwd):
    p = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def test_promtool_check_rules():
    assert "SUCCESS: 10 rules found" in _run([_tool("promtool"), "check", "rules", RULES.name], RULES.parent)


def test_promtool_test_rules():
    assert "SUCCESS" in _run([_tool("promtool"), "test", "rules", "netprobe.rules.test.yml"], RULES.parent)


def test_amtool_check_config():
    out = _run([_tool("amtool"), "check-config", "alertmanager.yml"], CONTRIB / "alertmanager")
    assert "SUCCESS" in out and "2 receivers" in out


def test_rules_read_only_exported_metrics():
    c = RecordCollector()
    c.add(Record(RESULT, "oneway", "ow", {"peer": "p:1", "sent": 10, "lost": 1, "loss": percent(10),
                                          "delay_p50": seconds(1e-3), "delay_p99": seconds(2e-3)}))
    c.add(Record(RESULT, "throughput", "tp", {"dir": "a->b", "rate": rate(1e6)}))
    c.add(event(BREACH, "throughput", "tp", metric="rate", value=rate(1e6), op=">=", threshold=rate(2e6),
                dir="a->b"))
    exported = {s.name for m in c.collect() for s in m.samples}
    used = set(re.findall(r"(?<![:\w])netprobe_[a-z0-9_]+(?![:\w])", RULES.read_text()))   # not recorded names
    assert used and used <= exported, used - exported
