"""Hypothesis fuzz of the capacity probe's parsers of outside input: the peer's control
messages, train packets, and record files. Each gives a value or its one error, never a crash."""
import io
import json

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netprobe.errors import ProbeError, load_extension
from netprobe.probes.capacity import responder
from netprobe.probes.capacity.runner import load_record

T = load_extension("_train")
fuzz = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30)
rows = st.lists(st.lists(st.integers(-2**65, 2**65) | st.integers(0, 3000) | st.booleans(), min_size=5,
                         max_size=7), max_size=5)


@fuzz
@given(st.one_of(json_values, st.builds(lambda r: {"plan": r}, rows)))
def test_plan_parser(msg):
    try:
        plan = responder.parse_plan(msg, 1472, 10e9)
    except responder.BadMessage as exc:
        assert str(exc)
        return
    assert plan.dtype == np.int64 and plan.shape[1] == T.PLAN_NCOLS
    sender_plan_ok = np.all((plan[:, 1] >= 2) & (plan[:, 2] <= 1472) & (plan[:, 3] <= plan[:, 1] - 2))
    assert sender_plan_ok


@fuzz
@given(json_values)
def test_setup_parser(msg):
    try:
        port, token = responder.parse_setup(msg)
    except responder.BadMessage:
        return
    assert 1 <= port <= 65535 and 0 <= token < 2**32


@fuzz
@given(st.binary(max_size=80))
def test_packet_parser(data):
    try:
        flags, count, token, train, index, size = T.parse_packet(data)
    except T.DecodeError as exc:
        assert "offset" in str(exc)
        return
    assert size == len(data) and index < count


@fuzz
@given(data=st.binary(max_size=400), as_npz=st.booleans())
def test_record_loader(tmp_path_factory, data, as_npz):
    path = tmp_path_factory.getbasetemp() / "r.npz"
    if as_npz:                      # a real npz container with arbitrary members
        buf = io.BytesIO()
        np.savez(buf, rx=np.frombuffer(data[: len(data) // 8 * 8], dtype=np.int64),
                 meta=np.frombuffer(json.dumps({"x": data.hex()[:20]}).encode(), dtype=np.uint8))
        data = buf.getvalue()
    path.write_bytes(data)
    try:
        load_record(path)
    except ProbeError as exc:
        assert "not a capacity record" in str(exc)


@fuzz
@given(text=st.one_of(st.text(max_size=200), st.lists(
    st.one_of(st.integers(-3, 5).map(str), st.builds("{},{}".format, st.floats(), st.floats()),
              st.text(max_size=10)), max_size=12).map("\n".join)))
def test_loco_csv_reader(tmp_path_factory, text):
    from netprobe.errors import UsageError
    from netprobe.probes.capacity import loco
    path = tmp_path_factory.getbasetemp() / "loco.csv"
    path.write_text(text)
    try:
        (r1, d1), (r2, d2) = loco.read_csv(path)
    except UsageError as exc:
        assert str(exc).startswith(str(path))
        return
    assert np.all(r1 > 0) and np.all(r2 > 0) and len(r1) == len(d1) and len(r2) == len(d2)
