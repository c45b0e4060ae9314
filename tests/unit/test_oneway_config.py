"""oneway settings: port descriptors (UDPing's syntax and ranges), ECMP port sizing,
one-line errors, and example.toml documenting every key."""
import math
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netprobe.config.load import build_probe_config, load_file, load_text
from netprobe.config.schema import Where, fields
from netprobe.errors import ConfigError
from netprobe.probes.oneway.config import Config, parse_ports, ports_for_ecmp

CONFIG_DIR = Path(__file__).resolve().parents[2] / "netprobe" / "config"
BASE = "[[probe]]\nkind = 'oneway'\nname = 'ow'\npeer = '192.0.2.1'\n"


def p_all_hit(n, k):
    """Exact P(k uniform draws hit all n paths), by inclusion-exclusion."""
    return sum((-1) ** j * math.comb(n, j) * Fraction(n - j, n) ** k for j in range(n + 1))


@pytest.mark.parametrize("n,k", [(8, 51), (16, 115), (32, 255)])
def test_auto_ports_cover_every_path_with_99_percent(n, k):
    assert ports_for_ecmp(n) == k                     # the published figures
    assert p_all_hit(n, k) >= Fraction(99, 100)
    assert n * math.log(n / 0.01) * 0.9 <= k <= n * math.log(n / 0.01)   # ~ the N ln(N/0.01)


def test_auto_ports_small_widths():
    assert ports_for_ecmp(1) == 1
    for n in range(2, 20):
        assert p_all_hit(n, ports_for_ecmp(n)) >= Fraction(99, 100)


@pytest.mark.parametrize("text,count,want", [
    ("5000", None, [5000]),
    ("5000-5009", None, list(range(5000, 5010))),
    ("5000,5005", None, [5000, 5005]),
    ("5000-5001,5005-5006", None, [5000, 5001, 5005, 5006]),
    ("5000", 3, [5000, 5001, 5002]),
    ("5005,5000,5005", None, [5000, 5005]),
])
def test_descriptors(text, count, want):
    assert parse_ports(text, count) == want


@pytest.mark.parametrize("text,count,msg", [
    ("5000-", None, "is not PORT or PORT-PORT"),
    ("a", None, 'only digits, "," and "-"'),
    ("1000", None, "port 1000 is out of range (1024-60000)"),
    ("5009-5000", None, "runs backwards"),
    ("5000-5001", 2, "port_count applies to a single starting port"),
    ("5000", 6000, "port_count must be 1 to 5000"),
    ("59999", 5, "passes 60000"),
    ("1024-7000", None, "more than 5000 ports"),
    ("", None, "only digits"),
])
def test_bad_descriptors(text, count, msg):
    with pytest.raises(ValueError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        parse_ports(text, count)


@pytest.mark.parametrize("extra,msg", [
    ("ports = '5000-'\n", "probe[0].ports: \"5000-\": \"5000-\" is not PORT or PORT-PORT"),
    ("port_count = 4\n", 'probe[0].port_count: goes with ports = "PORT"'),
    ("size_min = 80\nauth = true\n", "probe[0].size_min: must be at least 96 bytes (header and HMAC tag)"),
    ("size_max = 70\nsize_min = 80\n", "probe[0].size_max: must be at least the smallest probe (80 bytes)"),
    ("grace = '5s'\ninterval = '2s'\n", "probe[0].grace: must be shorter than interval"),
    ("schedule = 'bursty'\n", 'probe[0].schedule: "bursty" is not one of "poisson", "fixed"'),
    ("ecmp_width = 0\n", "probe[0].ecmp_width: 0 is out of range"),
    ("gap = '60s'\ninterval = '0.1s'\ngrace = '50ms'\n", "probe[0].gap: each port would get less than one"),
    ("trace = true\nnext_hops = ['02:1a:b0:00:01:01']\ninterface = 'lo'\n",
     'probe[0].trace: with next_hops needs next_hop_spread = "port"'),
    ("next_hop_spread = 'port'\n", "probe[0].next_hop_spread: goes with next_hops"),
    ("next_hop_spread = 'port'\nports = '5000'\ninterface = 'lo'\nnext_hops = ['02:1a:b0:00:01:01', "
     "'02:1a:b0:00:01:02']\n", "probe[0].ports: 1 ports for 2 next_hops"),
    ("max_hops = 65\n", "probe[0].max_hops: 65 is out of range"),
    ("trace_every = '1s'\n", "probe[0].trace_every:"),
    ("trace_share = 50\n", "probe[0].trace_share:"),
])
def test_bad_config_is_one_line(extra, msg):
    one_line_error(BASE + extra, msg)


def one_line_error(text, msg):
    with pytest.raises(ConfigError) as e:
        load_text(text)
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_defaults_and_sizes():
    cfg = load_text(BASE).probes[0].config
    assert (cfg.min_len, cfg.max_len, cfg.gap, cfg.schedule) == (64, 128, 0.001, "poisson")
    assert cfg.source_ports() is None and cfg.port_list_len() == 115
    tagged = load_text(BASE + "key = 'k'\n").probes[0].config
    assert tagged.min_len == 96


def test_example_documents_every_oneway_key():
    cfg = load_file(CONFIG_DIR / "example.toml")
    table = next(p.table for p in cfg.probes if p.kind == "oneway")
    assert {f.name for f in fields(Config)} <= set(table)


def test_default_runs_a_oneway_probe_against_its_own_peer():
    cfg = load_file(CONFIG_DIR / "default.toml")
    ow = next(p.config for p in cfg.probes if p.kind == "oneway")
    assert ow.peer in cfg.serve.listen



def test_probe_help_lists_every_setting(capsys):
    from netprobe import cli
    with pytest.raises(SystemExit) as e:
        cli.main(["probe", "oneway", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for f in fields(Config):
        assert out.count("--" + f.name.replace("_", "-") + " ") + out.count("--" + f.name.replace("_", "-") + "\n") \
            + out.count("--" + f.name.replace("_", "-") + ",") >= 1, f.name


NO_PEER = "[[probe]]\nkind = 'oneway'\nname = 'ow'\n"


def test_peers_name_each_peer():
    cfg = load_text(NO_PEER + "peers = ['ams=192.0.2.2', 'v6=[2001:db8::1]:7171']\n").probes[0].config
    assert cfg.peer_list() == [("ams", "192.0.2.2"), ("v6", "[2001:db8::1]:7171")]


@pytest.mark.parametrize("text,msg", [
    ("", "probe[0].peer: missing (required: a [peer.NAME] table or HOST[:PORT]"),
    ("peer = '192.0.2.1'\npeers = ['a=192.0.2.2']\n", "probe[0].peer: goes with a single peer"),
    ("peers = ['192.0.2.2']\n", 'probe[0].peers: "192.0.2.2" is not NAME=HOST[:PORT]'),
    ("peers = ['a b=192.0.2.2']\n", 'probe[0].peers: "a b=192.0.2.2" is not NAME=HOST[:PORT]'),
    ("peers = ['a=']\n", 'probe[0].peers: "a=" is not NAME=HOST[:PORT]'),
    ("peers = ['a=192.0.2.2', 'a=192.0.2.3']\n", 'probe[0].peers: "a" is named twice'),
    ("peers = ['a=dc2']\n", 'probe[0].peers: "a=dc2": "dc2" is not HOST[:PORT] (a [peer.NAME] table goes with'),
])
def test_bad_peers_are_one_line(text, msg):
    one_line_error(NO_PEER + text, msg)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(alphabet="ab.=:[]1 \n\"\\", max_size=12), max_size=5))
def test_any_peers_list_is_a_config_or_one_line_error(entries):
    try:
        cfg = build_probe_config("oneway", {"name": "ow", "peers": entries}, Where("f.toml", "probe[0]"))
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("f.toml: probe[0].")
        return
    assert [f"{n}={a}" for n, a in cfg.peer_list()] == entries and entries
