"""netprobe_breach stays bounded: a cleared breach leaves the scrape `expire` after its CLEAR.

Path localisation blames a hop in each BREACH (the suspect_hop label), so a daemon that runs
for months sees an open-ended set of label sets; without expiry each one stayed in memory and
in every scrape as a 0 forever. Read back with prometheus_client's own parser.
"""
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from netprobe.outputs.prometheus import RecordCollector, registry_of
from netprobe.results import BREACH, CLEAR, event, percent

EXPIRE, STEP, FAULTS = 60.0, 10.0, 400


def _breaches(registry):
    fams = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    return {(s.labels.get("probe"), s.labels.get("suspect_hop")): s.value
            for s in fams["netprobe_breach"].samples} if "netprobe_breach" in fams else {}


def _loss(kind, hop):
    return event(kind, "oneway", "ow", metric="loss", value=percent(20), op="<=", threshold=percent(1),
                 peer="p:1", suspect_hop=hop)


def test_cleared_breaches_expire_and_open_ones_stay():
    now = [0.0]
    col = RecordCollector(expire=EXPIRE, clock=lambda: now[0])
    reg = registry_of(col)
    col.add(event(BREACH, "throughput", "tp", metric="rate", value=1, op=">=", threshold=2, dir="a->b"))
    most = 0
    for i in range(FAULTS):                       # a new hop blamed every STEP seconds
        hop = f"198.18.{i // 200}.{i % 200 + 1}"
        col.add(_loss(BREACH, hop))
        now[0] += STEP / 2
        col.add(_loss(CLEAR, hop))
        now[0] += STEP / 2
        if i % 20 == 19:
            seen = _breaches(reg)
            assert seen[("tp", None)] == 1.0                      # open: stays however old
            assert seen[("ow", hop)] == 0.0                       # just cleared: still shown
            most = max(most, len(seen))
    # cleared within the last EXPIRE seconds, plus the open one
    assert most <= EXPIRE / STEP + 2, most
    now[0] += EXPIRE + 1
    assert _breaches(reg) == {("tp", None): 1.0}


def test_breaches_stay_bounded_without_scrapes():
    now = [0.0]
    col = RecordCollector(expire=EXPIRE, clock=lambda: now[0])
    for i in range(FAULTS):
        hop = f"198.18.{i // 200}.{i % 200 + 1}"
        col.add(_loss(BREACH, hop))
        col.add(_loss(CLEAR, hop))
        now[0] += STEP
    assert len(col.breach) <= EXPIRE / STEP + 1          # the structure itself, never collected
