"""Record formatting and breach hysteresis."""
import calendar
import json

from hypothesis import given
from hypothesis import strategies as st

from netprobe.results import (
    BREACH,
    CLEAR,
    RESULT,
    Hysteresis,
    Record,
    event,
    percent,
    rate,
    seconds,
)

TS = calendar.timegm((2026, 11, 23, 3, 25, 4)) + 0.123   # 2026-11-23T03:25:04.123Z


def test_breach_line_matches_the_documented_shape():
    rec = event(BREACH, "throughput", "dc1-dc2", dir="a->b", metric="rate", value=rate(812.4e6),
                op=">=", threshold=rate(950e6), window=seconds(15), ts=TS)
    assert rec.to_text() == ("2026-11-23T03:25:04.123Z BREACH probe=throughput name=dc1-dc2 dir=a->b "
                             "metric=rate value=812.4Mbit/s sla=>=950Mbit/s window=15s")
    d = json.loads(rec.to_json())
    assert d == {"ts": "2026-11-23T03:25:04.123Z", "type": "BREACH", "probe": "throughput",
                 "name": "dc1-dc2", "dir": "a->b", "metric": "rate", "value": 812.4e6, "sla_op": ">=",
                 "threshold": 950e6, "window": 15.0,
                 "units": {"value": "bit/s", "threshold": "bit/s", "window": "s"}}


def test_text_quotes_values_with_spaces_and_wire_round_trips():
    rec = Record(RESULT, "host", "my probe", {"error": 'said "no"', "late": seconds(0.00056),
                                              "steal": percent(0.5), "ok": True, "n": 3}, TS)
    text = rec.to_text()
    assert 'name="my probe"' in text and 'error="said \\"no\\""' in text
    assert "late=560us" in text and "steal=0.5%" in text and "ok=yes" in text and "n=3" in text
    assert Record.from_wire(rec.to_wire()) == rec


def test_text_flattens_nested_fields_into_grepable_keys():
    rec = Record(RESULT, "flows", "f", {"rtt_summary": {"p50": seconds(0.02), "p98": None},
                                        "nulls": {"corr": "too few samples"}, "ports": [5000, 5001],
                                        "modes": [{"at": 1, "n": 2}], "none": []}, TS)
    text = rec.to_text()
    assert "rtt_summary.p50=20ms rtt_summary.p98=- " in text
    assert 'nulls.corr="too few samples"' in text
    assert 'ports=5000,5001 modes=[{"at":1,"n":2}] none=-' in text


def run_hysteresis(seq, n, m):
    h = Hysteresis(n, m)
    return [h.update("k", bad) for bad in seq]


def test_hysteresis_breach_after_n_clear_after_m():
    seq = [True, True, False, True, True, True, False, False, True, False, False, False]
    out = run_hysteresis(seq, 3, 3)
    assert out.index(BREACH) == 5 and out.index(CLEAR) == 11
    assert [x for x in out if x] == [BREACH, CLEAR]


@given(st.lists(st.booleans(), max_size=200), st.integers(1, 6), st.integers(1, 6))
def test_hysteresis_against_a_window_definition(seq, n, m):
    """Reference: BREACH when the last n windows were all bad (and not in breach);
    CLEAR when the last m were all good (and in breach)."""
    state, events = False, []
    for i in range(len(seq)):
        if not state and i + 1 >= n and all(seq[i - n + 1:i + 1]):
            state = True
            events.append(BREACH)
        elif state and i + 1 >= m and not any(seq[i - m + 1:i + 1]):
            state = False
            events.append(CLEAR)
        else:
            events.append(None)
    assert run_hysteresis(seq, n, m) == events
