"""[output.prometheus|alertmanager|statsd|elasticsearch] tables users write: any table gives a
config or one one-line ConfigError, never a traceback."""
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netprobe.config.load import load_dict
from netprobe.config.schema import fields
from netprobe.errors import ConfigError
from netprobe.outputs import SINK_TYPES

TYPES = ["prometheus", "alertmanager", "statsd", "elasticsearch"]
KEYS = sorted({f.name for t in TYPES for f in fields(SINK_TYPES[t][0])} | {"type", "x"})
texts = st.one_of(st.text(max_size=30), st.sampled_from([
    "127.0.0.1:9471", "[::1]:9471", "[::1]", ":9471", "9471", "udp://127.0.0.1:8125", "udp://[::1]:8125",
    "udp://::1:8125", "/run/statsd.sock", "http://127.0.0.1:9093", "https://es:9200/", "http://", "ftp://x",
    "netprobe", "NetProbe", "_np", "np,x", "1s", "0s", "-1s", "dotted", "tagged", "BREACH", "RESULT"]))
scalars = st.one_of(texts, st.integers(-10**9, 10**9), st.floats(allow_nan=True), st.booleans())
values = st.one_of(scalars, st.lists(scalars, max_size=3))
tables = st.dictionaries(st.sampled_from(KEYS), values, max_size=6)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(TYPES), tables)
def test_sink_tables(kind, table):
    try:
        load_dict({"output": {"x": {**table, "type": kind}}}, "f.toml")
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("f.toml: output.x")
