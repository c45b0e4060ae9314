"""The config loader takes files users write: any input gives a config or one ConfigError."""
import tomllib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netprobe.config.load import load_dict, load_text
from netprobe.errors import ConfigError

KEYS = ["kind", "name", "interval", "breach_after", "timer_interval", "max_steal", "require_clock_sync",
        "format", "type", "path", "address", "rotate_size", "types", "log_level", "restart_backoff", "x"]
scalars = st.one_of(st.text(max_size=12), st.integers(-10**12, 10**12), st.floats(allow_nan=True),
                    st.booleans(), st.sampled_from(["host", "1ms", "64K", "stdout", "syslog", "jsonfile",
                                                    "udp://127.0.0.1:514", "9.5G", "2m", "RESULT"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                      st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)),
                      max_leaves=12)
tables = st.dictionaries(st.sampled_from(KEYS), values, max_size=6)
docs = st.fixed_dictionaries({}, optional={
    "daemon": tables,
    "probe": st.lists(tables, max_size=3) | values,
    "output": st.dictionaries(st.sampled_from(["stdout", "syslog", "jsonfile", "a"]), tables, max_size=2) | values,
    "peer": st.dictionaries(st.text(min_size=1, max_size=5), tables, max_size=2) | values,
})


def _load(fn, arg):
    try:
        fn(arg)
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(exc)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(docs)
def test_structured_documents(doc):
    _load(load_dict, doc)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300))
def test_arbitrary_text(text):
    _load(load_text, text)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from(['[daemon]', '[[probe]]', '[output.stdout]', 'kind = "host"',
                                 'name = "a"', 'name = "a"', 'interval = "1s"', 'interval = 0',
                                 'format = "json"', '[peer.x]', 'address = "h:1"', 'x = [1, "a"]',
                                 'rotate_size = "1K"', 'type = "jsonfile"', 'path = "/tmp/f"']), max_size=12))
def test_toml_shaped_lines(lines):
    text = "\n".join(lines)
    try:
        tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        pass
    _load(load_text, text)
