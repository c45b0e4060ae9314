"""[output.elasticsearch] against a local Bulk API endpoint (no Elasticsearch server installs here).

The endpoint checks every request against the Bulk API's documented format (POST /_bulk,
NDJSON, an action line naming one operation and a valid index, then the document, a
final newline) and answers as Elasticsearch does under load: a whole request refused
with 429, items refused with 429 (to retry) and 400 (a mapping error: never accepted).
Its own ledger of what it indexed is the oracle.
"""
import base64
import http.server
import json
import socket
import threading
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netprobe.config.schema import Where, build
from netprobe.errors import ConfigError
from netprobe.outputs.elasticsearch import ElasticsearchConfig, ElasticsearchSink, classify
from netprobe.results import RESULT, Record, percent, seconds

ACTIONS = {"index", "create", "update", "delete"}
ACTION_KEYS = {"_index", "_id", "routing", "require_alias", "if_seq_no", "if_primary_term", "version",
               "version_type", "pipeline", "dynamic_templates", "retry_on_conflict"}
INDEX_FORBIDDEN = set('\\/*?"<>| ,#:')


def check_bulk(body):
    """Parse a _bulk body per the Bulk API; [(action, metadata, source)] or AssertionError."""
    text = body.decode("utf-8")
    assert text.endswith("\n"), "the body must end with a newline"
    lines = text[:-1].split("\n")
    out, i = [], 0
    while i < len(lines):
        action = json.loads(lines[i])
        assert isinstance(action, dict) and len(action) == 1, f"line {i}: not one action: {lines[i]}"
        (op, meta), = action.items()
        assert op in ACTIONS and isinstance(meta, dict) and set(meta) <= ACTION_KEYS, lines[i]
        index = meta.get("_index")
        assert isinstance(index, str) and index == index.lower() and index not in (".", "..") \
            and index[0] not in "-_+" and not set(index) & INDEX_FORBIDDEN and len(index.encode()) <= 255, index
        source = None
        if op != "delete":
            i += 1
            source = json.loads(lines[i])
            assert isinstance(source, dict), f"line {i}: the document is not an object"
        out.append((op, meta, source))
        i += 1
    return out


class BulkEndpoint:
    """A local _bulk endpoint with Elasticsearch's failure modes, scripted by `answer(source, attempt)`."""

    def __init__(self, answer, auth=None, refuse_first=0):
        self.indexed = {}          # seq -> times indexed
        self.refused = set()       # seq answered 400
        self.attempts = {}         # seq -> times seen
        self.requests = []         # documents per request
        self.errors = []
        self.whole_429 = refuse_first
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                try:
                    assert self.path == "/_bulk", self.path
                    assert self.headers["Content-Type"] == "application/x-ndjson"
                    if auth:
                        assert self.headers["Authorization"] == "Basic " + base64.b64encode(auth.encode()).decode()
                    ops = check_bulk(self.rfile.read(int(self.headers["Content-Length"])))
                except (AssertionError, ValueError, TypeError) as exc:
                    outer.errors.append(repr(exc))
                    return self._reply(400, {"error": {"type": "parse_exception", "reason": str(exc)}, "status": 400})
                if outer.whole_429:
                    outer.whole_429 -= 1
                    return self._reply(429, {"error": {"type": "es_rejected_execution_exception"}, "status": 429})
                outer.requests.append(len(ops))
                items = []
                for op, meta, src in ops:
                    seq = src["seq"]
                    outer.attempts[seq] = outer.attempts.get(seq, 0) + 1
                    status = answer(src, outer.attempts[seq])
                    if status == 201:
                        outer.indexed[seq] = outer.indexed.get(seq, 0) + 1
                        outer.docs[seq] = (meta["_index"], src)
                    elif status == 400:
                        outer.refused.add(seq)
                    item = {"_index": meta["_index"], "status": status}
                    if status != 201:
                        item["error"] = {"type": "mapper_parsing_exception" if status == 400
                                         else "es_rejected_execution_exception", "reason": "scripted"}
                    items.append({op: item})
                self._reply(200, {"took": 1, "errors": any(i[op]["status"] != 201 for i in items), "items": items})

            def _reply(self, code, obj):
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass
        self.docs = {}
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def _sink(**table):
    return ElasticsearchSink(build(ElasticsearchConfig, table, Where("t.toml", "output.es")))


def _records(n):
    return [Record(RESULT, "oneway", "ow", {"seq": i, "lost": i % 3, "loss": percent(0.5), "delay_p99": seconds(1e-3)},
                   1_800_000_000.0 + i) for i in range(n)]


def _wait(pred, timeout=20):
    end = time.monotonic() + timeout
    while time.monotonic() < end and not pred():
        time.sleep(0.02)
    return pred()


def test_partial_failures_and_429s_are_retried_and_mapping_errors_dropped(tmp_path):
    def answer(src, attempt):
        if src["seq"] % 7 == 3:
            return 400                           # never accepted
        if src["seq"] % 5 == 0 and attempt == 1:
            return 429                           # accepted on the retry
        return 201
    (tmp_path / "pw").write_text("pa:ss\n")
    es = BulkEndpoint(answer, auth="netprobe:pa:ss", refuse_first=1)
    sink = _sink(url=es.url + "/", index="np", batch=40, flush_interval="50ms", basic_auth_user="netprobe",
                 basic_auth_password_file=str(tmp_path / "pw"))
    recs = _records(200)
    sink.start({})
    try:
        for r in recs:
            sink.write(r)
        want = {r.fields["seq"] for r in recs if r.fields["seq"] % 7 != 3}
        assert _wait(lambda: set(es.indexed) == want and sink.dropped == len(es.refused))
    finally:
        sink.close()
        es.close()
    assert es.errors == []
    assert all(n == 1 for n in es.indexed.values())          # nothing indexed twice
    assert es.refused == {s for s in range(200) if s % 7 == 3} and sink.dropped == len(es.refused)
    assert max(es.requests) <= 40
    for r in recs:
        if r.fields["seq"] in es.docs:
            index, doc = es.docs[r.fields["seq"]]
            assert index == "np-" + time.strftime("%Y.%m.%d", time.gmtime(r.ts))
            assert doc == {**r.to_dict(), "@timestamp": int(round(r.ts * 1000))}


def test_a_yes_no_sla_is_a_number_like_the_others():
    """One index holds every kind's BREACH lines: value must map to one type (a number)."""
    from netprobe.outputs.elasticsearch import bulk_lines
    from netprobe.results import BREACH, event
    recs = [event(BREACH, "host", "self", metric="clock_sync", value=False, op="", threshold=True),
            event(BREACH, "host", "self", metric="steal", value=percent(12.0), op="<=", threshold=percent(10))]
    docs = [json.loads(d) for _, d in bulk_lines(recs, "np")]
    assert [(d["value"], d["threshold"]) for d in docs] == [(0.0, 1.0), (12.0, 10.0)]
    assert (docs[0]["value_text"], docs[0]["threshold_text"]) == ("no", "yes")


def test_unreachable_endpoint_drops_the_oldest_beyond_pending_and_the_rest_at_close():
    with socket.socket() as s:                 # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    sink = _sink(url=f"http://127.0.0.1:{port}", pending=10, batch=100, flush_interval="1h", timeout="200ms")
    sink.start({})
    for r in _records(25):
        sink.write(r)
    assert sink.dropped == 15                  # pushed out by newer documents, at once
    t0 = time.monotonic()
    sink.close()
    assert sink.dropped == 25 and time.monotonic() - t0 < 2


def test_close_delivers_what_is_queued():
    es = BulkEndpoint(lambda src, attempt: 201)
    sink = _sink(url=es.url, batch=1000, flush_interval="1h")
    sink.start({})
    for r in _records(30):
        sink.write(r)
    sink.close()
    es.close()
    assert sorted(es.indexed) == list(range(30)) and sink.dropped == 0 and es.errors == []


_json = st.recursive(st.none() | st.booleans() | st.integers(-1000, 1000) | st.text(max_size=5),
                     lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4),
                     max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(answer=st.one_of(_json, st.fixed_dictionaries({"items": st.lists(
    st.one_of(_json, st.dictionaries(st.sampled_from(["index", "create"]), st.fixed_dictionaries(
        {"status": st.one_of(st.integers(0, 600), _json)}), min_size=1, max_size=1)), min_size=3, max_size=3)})))
def test_any_bulk_answer_is_classified_without_losing_a_document(answer):
    batch = [[f"a{i}", f"d{i}", 0] for i in range(3)]
    retry, refused = classify(answer, batch)
    assert all(e in batch for e in retry)
    if refused is None:
        assert retry == batch
    else:
        assert len(retry) + len(refused) <= 3


@pytest.mark.parametrize("table, message", [
    ({"url": "es:9200"}, 'output.es.url: "es:9200" is not an http:// or https:// URL'),
    ({"index": "NetProbe"}, 'output.es.index: "NetProbe" is not an index name'),
    ({"index": "_np"}, 'output.es.index: "_np" is not an index name'),
    ({"basic_auth_user": "u"}, "output.es.basic_auth_password_file: basic_auth_user and"),
    ({"batch": 0}, "output.es.batch: 0 is out of range"),
])
def test_config_errors_name_the_key(table, message):
    with pytest.raises(ConfigError) as exc:
        _sink(**table)
    assert message in str(exc.value)
