"""The capacity probe's settings: validation, example.toml, the CLI."""
import pytest

from netprobe import cli
from netprobe.config.load import load_file, load_text
from netprobe.config.schema import fields
from netprobe.errors import ConfigError
from netprobe.probes.capacity import Config
from tests.unit.test_config import CONFIG_DIR

BASE = "[[probe]]\nkind = 'capacity'\nname = 'c'\npeer = '192.0.2.1'\n"


def test_example_documents_every_capacity_key():
    cfg = load_file(CONFIG_DIR / "example.toml")
    table = next(p.table for p in cfg.probes if p.kind == "capacity")
    assert {f.name for f in fields(Config)} <= set(table)


def test_defaults_and_units():
    c = load_text(BASE + "every = '10m'\nmin_capacity = '95M'\nmax_bytes = '5M'\n").probes[0].config
    assert (c.mode, c.every, c.min_capacity, c.max_bytes, c.max_size, c.overhead) == \
        ("quick", 600.0, 95e6, 5 << 20, 0, 14)


@pytest.mark.parametrize("extra, where", [
    ("mode = 'fast'\n", "probe[0].mode"),
    ("train_length = 2\n", "probe[0].train_length"),
    ("max_size = 500\nmin_size = 600\n", "probe[0].max_size"),
    ("max_size = 9001\n", "probe[0].max_size"),
    ("max_load = 0\n", "probe[0].max_load"),
])
def test_bad_values_name_the_key(extra, where):
    with pytest.raises(ConfigError, match=where.replace("[", r"\[").replace("]", r"\]")):
        load_text(BASE + extra)


def test_cli_bad_option_is_one_line(capsys):
    assert cli.main(["probe", "capacity", "--peer", "127.0.0.1:1", "--mode", "fast"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--mode" in err
