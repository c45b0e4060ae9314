"""Config loading: the shipped files load, and each bad file gives one line and exit 2."""
import subprocess
import sys
from pathlib import Path

import pytest

from netprobe import cli
from netprobe.config.load import load_file, load_text

CONFIG_DIR = Path(__file__).resolve().parents[2] / "netprobe" / "config"

GOOD_HOST = '[[probe]]\nkind = "host"\nname = "self"\n'

# (id, file text, substring the one-line error must contain)
BAD = [
    ("toml-syntax", "[daemon\nlog_level = 1\n", "invalid TOML"),
    ("unknown-top", "[deamon]\n" + GOOD_HOST, "deamon: unknown key; did you mean 'daemon'?"),
    ("unknown-daemon-key", "[daemon]\nlog_levl = 'info'\n",
     "daemon.log_levl: unknown key; did you mean 'log_level'?"),
    ("bad-choice", "[daemon]\nlog_level = 'loud'\n", 'daemon.log_level: "loud" is not one of "debug", "info"'),
    ("bad-duration-unit", "[daemon]\nrestart_backoff = '5 parsecs'\n",
     'daemon.restart_backoff: "5 parsecs" is not a duration (examples: 100ms, 15s'),
    ("duration-out-of-range", "[daemon]\nrestart_backoff = '2h'\n",
     'daemon.restart_backoff: "2h" is out of range (valid: 10ms to 3600s)'),
    ("cross-field", "[daemon]\nrestart_backoff = '30s'\nrestart_backoff_max = '10s'\n",
     "daemon.restart_backoff: must not exceed restart_backoff_max"),
    ("missing-kind", "[[probe]]\nname = 'x'\n", "probe[0].kind: missing (one of: host"),
    ("unknown-kind", "[[probe]]\nkind = 'tcpxfer'\nname = 'x'\n", 'probe[0].kind: "tcpxfer" is not a probe kind'),
    ("missing-name", "[[probe]]\nkind = 'host'\n", "probe[0].name: missing"),
    ("bad-name", "[[probe]]\nkind = 'host'\nname = 'my probe'\n", 'probe[0].name: "my probe" is not a name'),
    ("duplicate-name", GOOD_HOST + GOOD_HOST, 'probe[1].name: "self" is already used by probe[0]'),
    ("wrong-type-bool", GOOD_HOST + "interval = true\n", "probe[0].interval: true is not a duration"),
    ("wrong-type-int", GOOD_HOST + "breach_after = 1.5\n", "probe[0].breach_after: 1.5 is not an integer"),
    ("int-out-of-range", GOOD_HOST + "breach_after = 0\n",
     "probe[0].breach_after: 0 is out of range (valid: 1 to 1000)"),
    ("zero-interval", GOOD_HOST + "interval = '0ms'\n", 'probe[0].interval: "0ms" is out of range (valid: 100ms to'),
    ("unknown-probe-key", GOOD_HOST + "intervl = '1s'\n", "probe[0].intervl: unknown key; did you mean 'interval'?"),
    ("bad-float", GOOD_HOST + "max_steal = 'lots'\n", 'probe[0].max_steal: "lots" is not a number'),
    ("rate-as-duration", GOOD_HOST + "timer_interval = '10 Gbps'\n",
     'probe[0].timer_interval: "10 Gbps" is not a duration'),
    ("bool-as-string", GOOD_HOST + "require_clock_sync = 'yes'\n",
     'probe[0].require_clock_sync: "yes" is not true or false'),
    ("probe-not-array", "[probe]\nkind = 'host'\n", "probe: must be an array of tables: [[probe]]"),
    ("missing-peer", "[[probe]]\nkind = 'throughput'\nname = 't'\nrate = '1G'\n", "probe[0].peer: missing"),
    ("unknown-peer", "[peer.dc2]\naddress = '192.0.2.1'\n[[probe]]\nkind = 'throughput'\nname = 't'\n"
     "peer = 'dc3'\nrate = '1G'\n", 'probe[0].peer: "dc3" is neither a [peer.NAME] table (dc2) nor HOST[:PORT]'),
    ("bad-rate", "[[probe]]\nkind = 'throughput'\nname = 't'\npeer = 'h.example'\nrate = '10 Gbps'\n",
     'probe[0].rate: "10 Gbps" is not a rate (examples: 100M, 9.5G, 1.2Gbit/s'),
    ("rate-out-of-range", "[[probe]]\nkind = 'throughput'\nname = 't'\npeer = 'h.example'\nrate = '40G'\n",
     'probe[0].rate: "40G" is out of range (valid: 1kbit/s to 10Gbit/s)'),
    ("serve-bad-listen", "[serve]\nlisten = ['host:99999']\n", 'serve.listen: "host:99999" is not HOST:PORT'),
    ("missing-peer-address", "[peer.dc2]\nkey = 'k'\n", "peer.dc2.address: missing"),
    # a key that is not bare is quoted, as TOML writes it: a newline in it cannot split the line
    ("quoted-peer-name", '[peer."dc\\n2"]\nkey = "k"\n', 'peer."dc\\n2".address: missing'),
    ("quoted-unknown-key", '[daemon]\n"log\\tlevel" = 1\n', 'daemon."log\\tlevel": unknown key'),
    ("quoted-output-name", '[output."a b"]\ntype = "jsonfile"\n', 'output."a b".path: missing'),
    # and so is a value: Hypothesis found a newline splitting this one
    ("escaped-value", '[peer]\nkind = "\\n"\n', 'peer.kind: "\\n" is not a table'),
    ("bad-peer-address", "[peer.dc2]\naddress = 'a b'\n", 'peer.dc2.address: "a b" is not HOST or HOST:PORT'),
    ("unknown-output-type", "[output.pager]\n", "output.pager"),
    ("bad-output-key", "[output.stdout]\nformt = 'json'\n", "output.stdout.formt: unknown key; did you mean 'format'?"),
    ("bad-output-format", "[output.stdout]\nformat = 'xml'\n", 'output.stdout.format: "xml" is not one of'),
    ("bad-size-unit", "[output.a]\ntype = 'jsonfile'\npath = '/tmp/x'\nrotate_size = '64 mb'\n",
     'output.a.rotate_size: "64 mb" is not a size in bytes (examples: 1400, 64K'),
]


@pytest.mark.parametrize("text,expected", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_config_gives_one_line_and_exit_2(tmp_path, capsys, text, expected):
    path = tmp_path / "netprobe.toml"
    path.write_text(text)
    assert cli.main(["check-config", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"netprobe: error: {path}: "), lines[0]
    assert expected in lines[0], lines[0]


def test_bad_config_through_the_real_command_has_no_traceback(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(GOOD_HOST + "interval = 'soon'\n")
    proc = subprocess.run([sys.executable, "-m", "netprobe", "run", "-c", str(path)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert 'probe[0].interval: "soon" is not a duration' in proc.stderr


def test_missing_file(tmp_path, capsys):
    assert cli.main(["check-config", str(tmp_path / "nope.toml")]) == 2
    assert "cannot read: No such file or directory" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["default.toml", "example.toml"])
def test_shipped_files_load(name):
    cfg = load_file(CONFIG_DIR / name)
    assert cfg.probes, "the shipped file runs at least one probe"
    assert {"host", "throughput"} <= {p.kind for p in cfg.probes}


def test_example_documents_every_host_and_daemon_key():
    """example.toml is the annotated reference: it must show every setting there is."""
    from netprobe.config.defaults import DaemonConfig
    from netprobe.config.schema import fields
    from netprobe.probes.host import Config as HostConfig
    cfg = load_file(CONFIG_DIR / "example.toml")
    from netprobe.probes.throughput import Config as ThroughputConfig
    from netprobe.serve import ServeConfig
    for kind, cls in (("host", HostConfig), ("throughput", ThroughputConfig)):
        table = next(p.table for p in cfg.probes if p.kind == kind)
        assert {f.name for f in fields(cls)} <= set(table), kind
    assert {f.name for f in fields(ServeConfig)} <= set(cfg.supplied["serve"])
    assert {f.name for f in fields(DaemonConfig)} <= set(cfg.supplied["daemon"])


def test_units_and_defaults_are_applied():
    cfg = load_text(GOOD_HOST + "interval = '2m'\ntimer_interval = '250us'\n"
                    "[output.a]\ntype = 'jsonfile'\npath = '/tmp/x'\nrotate_size = '64K'\n")
    host = cfg.probes[0].config
    assert host.interval == 120.0
    assert host.timer_interval == pytest.approx(250e-6)
    assert host.breach_after == 3
    assert cfg.outputs["a"].rotate_size == 65536
    assert cfg.daemon.restart_backoff == 1.0
    eff = cfg.effective()
    assert eff["probe"][0]["interval"] == 120.0 and eff["probe"][0]["kind"] == "host"


def test_no_outputs_means_stdout():
    assert list(load_text(GOOD_HOST).outputs) == ["stdout"]


# --- keys never leave the process ----------------------------------------------------------------

def _keyed_config(tmp_path):
    """A config with a distinct random key in every place one can go; returns (path, keys)."""
    import os
    keys = {n: os.urandom(16).hex() for n in ("serve", "peer", "probe", "oneway", "key_file")}
    key_file = tmp_path / "peer.key"
    key_file.write_text(keys["key_file"] + "\n")
    key_file.chmod(0o600)
    path = tmp_path / "keyed.toml"
    path.write_text(f"""
[serve]
listen = ["127.0.0.1:7171"]
key = "{keys['serve']}"

[peer.far]
address = "127.0.0.1:7171"
key = "{keys['peer']}"

[[probe]]
kind = "throughput"
name = "tp"
peer = "far"
rate = "10M"
interval = "1s"
key = "{keys['probe']}"

[[probe]]
kind = "oneway"
name = "ow"
peer = "far"
interval = "1s"
key = "{keys['oneway']}"
""")
    return path, keys, key_file


def test_check_config_json_redacts_every_key(tmp_path):
    import json
    path, keys, _ = _keyed_config(tmp_path)
    p = subprocess.run([sys.executable, "-m", "netprobe", "check-config", "--json", str(path)],
                       capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    for k in keys.values():
        assert k.encode() not in p.stdout + p.stderr
    eff = json.loads(p.stdout)
    assert eff["serve"]["key"] == eff["peer"]["far"]["key"] == "<redacted>"
    assert [pr["key"] for pr in eff["probe"]] == ["<redacted>", "<redacted>"]


def test_supplied_config_is_kept_with_keys_redacted(tmp_path):
    path, keys, _ = _keyed_config(tmp_path)
    cfg = load_file(path)
    assert cfg.supplied["serve"] == {"listen": ["127.0.0.1:7171"], "key": "<redacted>"}
    assert cfg.supplied["peer"]["far"] == {"address": "127.0.0.1:7171", "key": "<redacted>"}
    assert cfg.probes[0].table["key"] == keys["probe"]          # the worker still gets its key


@pytest.mark.parametrize("value", ['["s3cr3t-k3y-value-in-a-list"]', '{x = "s3cr3t-k3y-value-in-a-table"}',
                                   "4242424242"])
def test_config_error_on_a_key_never_quotes_it(tmp_path, capsys, value):
    path = tmp_path / "bad.toml"
    path.write_text(f'[serve]\nkey = {value}\n')
    assert cli.main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err == f"netprobe: error: {path}: serve.key: <redacted> is not a string\n"


def test_logs_and_records_are_scrubbed_of_configured_keys(tmp_path, caplog):
    """A key quoted by some error deep in a probe (here: a log line and an ERROR record carrying
    it, and the contents of a key file) comes out as <redacted>."""
    import logging

    from netprobe.results import ERROR, Record
    path, keys, key_file = _keyed_config(tmp_path)
    text = path.read_text().replace('key = "' + keys["serve"] + '"', f'key_file = "{key_file}"')
    path.write_text(text)
    del keys["serve"]                                # now in the key file instead
    load_file(path)
    caplog.set_level(logging.INFO)
    for k in keys.values():
        logging.getLogger("netprobe.test").error("peer said %s", k)
        rec = Record(ERROR, "throughput", "tp", {"error": f"refused: {k}", "detail": {"k": [k]}})
        assert k not in rec.to_text() and k not in rec.to_json() and "<redacted>" in rec.to_text()
    assert caplog.records and all("<redacted>" in r.getMessage() for r in caplog.records)
    assert not any(k in caplog.text for k in keys.values())


def _toml_docs():
    from hypothesis import strategies as st
    names = st.sampled_from(["key", "api_key", "Key", "peer", "listen", "keep", "key_file", "name", "monkey_business"])
    scalars = st.one_of(st.text(min_size=1, max_size=20), st.integers(), st.booleans())
    return st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                         st.dictionaries(names, inner, max_size=5)), max_leaves=30)


def _walk(doc, path=()):
    """(path, name, value) of every dict entry in a nested document."""
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield path, k, v
            yield from _walk(v, path + (k,))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from _walk(v, path + (i,))


def test_redact_hides_every_key_and_keeps_the_rest():
    from hypothesis import given, settings

    from netprobe import redact

    @settings(max_examples=300, deadline=None)
    @given(doc=_toml_docs())
    def check(doc):
        out = redact.redact(doc)
        got = {(p, k): v for p, k, v in _walk(out)}
        for p, k, v in _walk(doc):
            if any(redact.is_secret_name(x) for x in p if isinstance(x, str)):
                continue                        # inside a redacted value: gone with it
            if k.lower().endswith("key") and v not in ("", None):
                assert got[(p, k)] == "<redacted>"
            elif not isinstance(v, (dict, list)):
                assert got[(p, k)] == v
    check()
