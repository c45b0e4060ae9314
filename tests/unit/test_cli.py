"""The command line as a user meets it: help, usage errors, one-shot probes."""
import json
import subprocess
import sys

import pytest

from netprobe import cli, probes
from netprobe.config import schema


def run(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "netprobe", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_help_teaches_with_examples(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for text in ("netprobe run -c", "check-config", "probe host", "selftest timer", "exit codes"):
        assert text in out


def test_probe_help_lists_every_setting_once_with_its_default(capsys):
    with pytest.raises(SystemExit):
        cli.main(["probe", "host", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--timer-interval DURATION" in out and "(default: 1ms)" in out
    assert "--max-steal FLOAT" in out and "(default: 10.0)" in out
    assert "default 1ms" not in out, "the default is stated once, by the generator"


@pytest.mark.parametrize("kind", probes.KINDS)
def test_every_probe_kinds_help_shows_each_settings_text_as_written(kind, capsys):
    """argparse expands %-formats in help: a doc with a literal % must still print."""
    with pytest.raises(SystemExit) as exc:
        cli.main(["probe", kind, "--help"])
    assert exc.value.code == 0
    out = "".join(capsys.readouterr().out.split())         # argparse wraps lines, also at hyphens
    for name, _, _, doc in schema.describe(probes.load(kind).Config):
        assert "".join(doc.split()) in out, name


@pytest.mark.parametrize("argv,message", [
    (["bogus"], "invalid choice: 'bogus'"),
    (["run"], "the following arguments are required: -c/--config"),
    (["run", "-c", "x.toml", "--pidfile", "p"], "--pidfile goes with --daemon"),
    (["run", "-c", "x.toml", "--daemon"], "--daemon needs --pidfile FILE"),
    (["probe", "host", "--interval", "1x"], '--interval: "1x" is not a duration'),
    (["probe", "host", "--breach-after", "x"], '--breach-after: "x" is not an integer'),
    (["probe", "host", "--max-steal", "101"], "--max-steal: 101.0 is out of range (valid: 0.0 to 100.0)"),
    (["probe", "nosuch"], "invalid choice: 'nosuch'"),
    (["selftest", "timer", "--interval", "fast"], 'is not a duration'),
    (["serve", "--listen", "host:99999"], '--listen: "host:99999" is not HOST:PORT'),
])
def test_usage_errors_are_one_line_exit_2(capsys, argv, message):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("netprobe: error: "), err
    assert message in err, err


def test_probe_host_one_shot_json():
    proc = run("probe", "host", "--interval", "0.5s", "--duration", "2s", "--json",
               "--no-require-clock-sync", "--name", "cli")
    assert proc.returncode == 0, proc.stderr
    recs = [json.loads(line) for line in proc.stdout.splitlines()]
    results = [r for r in recs if r["type"] == "RESULT"]
    # --duration counts from daemon start; the worker's own start-up (imports) takes some of it,
    # up to about a second on a loaded machine: full intervals, then the partial one at stop
    assert 3 <= len(results) <= 5, results
    assert all(r["name"] == "cli" and r["probe"] == "host" for r in recs)
    slots = sum(r["ticks"] + r["overruns"] for r in results)
    assert 1000 <= slots <= 2005                   # 2 s of 1 ms slots less start-up, +1 per interval boundary
    assert proc.stderr == ""


def test_selftest_timer_prints_irtt_style_lines():
    proc = run("selftest", "timer", "--interval", "1ms", "--duration", "1s")
    assert proc.returncode == 0, proc.stderr
    for key in ("ticks", "expected ticks", "overruns", "lateness p50", "lateness p99.9", "lateness max"):
        assert f"{key}:" in proc.stdout


def test_version():
    proc = run("version")
    assert proc.returncode == 0 and proc.stdout.startswith("netprobe 0.")


def test_version_option_prints_the_same_line():
    proc = run("--version")
    assert proc.returncode == 0 and proc.stdout == run("version").stdout
