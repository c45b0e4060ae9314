"""netprobe.peer.protocol with bytes alone: framing limits, the handshake machines on both
sides, the HMAC proof (checked against an HMAC computed here from the wire rules), and every
malformed or truncated input."""
import hashlib
import hmac
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netprobe.peer import protocol as P

NONCE = "0123456789abcdef0123456789abcdef"
KEY = b"a-shared-key-of-enough-bytes"
KINDS = ("oneway", "throughput", "capacity")


def server(key=None, now=0.0, timeout=2.0):
    return P.ServerHandshake(NONCE, now, timeout, KINDS, key)


def expected_mac(key, challenge, hello):
    """The proof written from the wire rules in the module docstring, independently of auth_mac."""
    body = json.dumps({k: v for k, v in hello.items() if k != "auth"}, sort_keys=True, separators=(",", ":"))
    return hmac.new(key, b"netprobe auth v1:" + challenge.encode() + b"\n" + body.encode(),
                    hashlib.sha256).hexdigest()


def line(obj):
    return json.dumps(obj).encode() + b"\n"


def run_pair(client, srv, now=0.0):
    """Shuttle bytes between two machines until neither has anything to send; events of each."""
    c_events, s_events = [], []
    for _ in range(10):
        s_out = srv.data_to_send()
        if s_out:
            c_events += client.receive_data(s_out, now)
        c_out = client.data_to_send()
        if c_out:
            s_events += srv.receive_data(c_out, now)
        if not s_out and not c_out:
            break
    return c_events, s_events


# -- framer ------------------------------------------------------------------------------------

def test_framer_splits_lines_and_keeps_the_rest():
    f = P.LineFramer(10)
    assert f.lines(b"ab\ncd") == [b"ab"]
    assert f.pending == b"cd"
    assert f.lines(b"e\n\nxyz") == [b"cde", b""]
    assert f.pending == b"xyz"


def test_framer_limit_is_exact():
    f = P.LineFramer(4)
    assert f.lines(b"abcd\n") == [b"abcd"]
    with pytest.raises(P.LineTooLong):
        f.lines(b"abcde\n")


def test_framer_refuses_a_long_line_before_its_end_arrives():
    f = P.LineFramer(100)
    f.lines(b"x" * 100)                      # still within the limit: waits
    with pytest.raises(P.LineTooLong):
        f.lines(b"x")                        # the 101st byte without a newline


def test_framer_trickled_bytes():
    f = P.LineFramer(64)
    got = []
    for b in b'{"a":1}\n{"b":2}\n':
        got += f.lines(bytes([b]))
    assert got == [b'{"a":1}', b'{"b":2}']


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=30), max_size=20), st.integers(1, 40))
def test_framer_matches_split_for_any_chunking(chunks, limit):
    """Oracle: bytes.split on the whole stream; the framer must agree however the stream is cut."""
    stream = b"".join(chunks)
    *want, rest = stream.split(b"\n")
    f = P.LineFramer(limit)
    got, too_long = [], False
    try:
        for c in chunks:
            got += f.lines(c)
        got += f.lines()
    except P.LineTooLong:
        too_long = True
    if any(len(x) > limit for x in want) or len(rest) > limit:
        first_bad = next((i for i, x in enumerate(want) if len(x) > limit), len(want))
        assert too_long and got == want[:first_bad]
    else:
        assert not too_long and got == want and f.pending == rest


# -- decode and text ---------------------------------------------------------------------------

@pytest.mark.parametrize("raw", [b"", b"[]", b"1", b'"x"', b"{", b"\xff\xfe", b'{"a": NaN}',
                                 b'{"a": Infinity}', b"[" * 3000 + b"]" * 3000, b"null"])
def test_decode_refuses_non_objects(raw):
    with pytest.raises(P.ProtocolError):
        P.decode(raw)


def test_clean_text_drops_control_characters_and_bounds_length():
    assert P.clean_text("busy\r\n\x1b[31mred\x9b") == "busy???[31mred?"
    assert len(P.clean_text("x" * 5000)) == P.ERROR_MAX
    assert P.clean_text({"a": "\x1b"}) == '{"a": "\\u001b"}'


# -- server handshake --------------------------------------------------------------------------

def test_greeting_without_key_has_nonce_only():
    s = server()
    assert json.loads(s.data_to_send()) == {"netprobe": 1, "nonce": NONCE}
    assert s.data_to_send() == b""


def test_greeting_with_key_carries_the_challenge():
    s = server(KEY)
    assert json.loads(s.data_to_send()) == {"netprobe": 1, "nonce": NONCE, "challenge": NONCE}


def test_good_hello_gives_hello_event_and_keeps_trailing_bytes():
    s = server()
    s.data_to_send()
    ev = s.receive_data(line({"netprobe": 1, "kind": "oneway", "nports": 3}) + b"extra", 0.5)
    assert ev == [P.Hello("oneway", {"netprobe": 1, "kind": "oneway", "nports": 3})]
    assert s.state is P.State.DONE and s.trailing == b"extra" and s.data_to_send() == b""


def test_keyed_hello_accepted_with_proof_computed_from_the_rules():
    s = server(KEY)
    s.data_to_send()
    hello = {"netprobe": 1, "kind": "capacity", "x": [1, 2.5, "é"]}
    hello["auth"] = expected_mac(KEY, NONCE, hello)
    ev = s.receive_data(line(hello), 0.1)
    assert ev == [P.Hello("capacity", {"netprobe": 1, "kind": "capacity", "x": [1, 2.5, "é"]})]


@pytest.mark.parametrize("auth", [None, 5, "", "zz" * 32, "A" * 64, "é" * 64, "0" * 63, "0" * 65, ["x"],
                                  "0" * 64])
def test_bad_proofs_are_refused_not_raised(auth):
    s = server(KEY)
    s.data_to_send()
    hello = {"netprobe": 1, "kind": "oneway"}
    if auth is not None:
        hello["auth"] = auth
    assert s.receive_data(line(hello), 0.1) == [P.Refused("authentication failed", "bad_auth")]
    assert json.loads(s.data_to_send()) == {"ok": False, "error": "authentication failed"}
    assert s.state is P.State.CLOSED


def test_proof_covers_every_field_of_the_hello():
    """A proof for one hello does not authenticate the same hello with a field changed."""
    hello = {"netprobe": 1, "kind": "throughput", "rate_down": 1000}
    hello["auth"] = expected_mac(KEY, NONCE, hello)
    tampered = {**hello, "rate_down": 10**12}
    s = server(KEY)
    s.data_to_send()
    assert s.receive_data(line(tampered), 0.1)[0].counter == "bad_auth"


def test_proof_is_bound_to_the_challenge():
    hello = {"netprobe": 1, "kind": "oneway"}
    hello["auth"] = expected_mac(KEY, "f" * 32, hello)
    s = server(KEY)
    s.data_to_send()
    assert s.receive_data(line(hello), 0.1)[0].counter == "bad_auth"


@pytest.mark.parametrize("data,counter,text", [
    (b"GET / HTTP/1.0\r\n\r\n", "bad_handshake", "bad handshake: not a JSON line"),
    (b"[]\n", "bad_handshake", "bad handshake: not a JSON object"),
    (b'{"netprobe": 2}\n', "bad_handshake", "not a netprobe protocol 1 hello"),
    (b'{"netprobe": true, "kind": "oneway"}\n', "bad_handshake", "not a netprobe protocol 1 hello"),
    (b'{"netprobe": 1}\n', "unknown_kind", "does not serve kind null"),
    (b'{"netprobe": 1, "kind": "teleport\\u001b"}\n', "unknown_kind", "does not serve kind 'teleport?'"),
    (b"\xff" * 5000, "bad_handshake", "hello longer than 4096 bytes"),
])
def test_malformed_hellos_refused_with_one_line(data, counter, text):
    s = server()
    s.data_to_send()
    (ev,) = s.receive_data(data, 0.1)
    assert ev.counter == counter and text in ev.error
    out = s.data_to_send()
    assert out.count(b"\n") == 1 and json.loads(out) == {"ok": False, "error": ev.error}


def test_deadline_counts_from_the_start_so_trickling_does_not_extend_it():
    s = server(timeout=2.0)
    s.data_to_send()
    t = 0.0
    for b in b'{"netprobe": 1, "kind": "oneway"':     # one byte every 0.1 s: never complete in time
        t += 0.1
        ev = s.receive_data(bytes([b]), t)
        if ev:
            break
    assert t <= 2.05 and ev[0].counter == "timeout" and "handshake_timeout=2s" in ev[0].error


def test_tick_before_deadline_is_quiet_after_it_refuses():
    s = server(timeout=2.0, now=10.0)
    assert s.tick(11.9) == []
    assert s.tick(12.0)[0].counter == "timeout"
    assert s.tick(13.0) == []                  # refused once


def test_eof_during_handshake_is_a_refusal_with_nothing_to_send():
    s = server()
    s.data_to_send()
    assert s.receive_data(b"", 0.1)[0].counter == "bad_handshake"
    assert s.data_to_send() == b""


def test_nonce_must_be_hex():
    with pytest.raises(ValueError):
        P.ServerHandshake("nothex", 0, 2, KINDS)


@settings(max_examples=400, deadline=None)
@given(st.one_of(
    st.binary(max_size=6000),
    st.dictionaries(st.text(max_size=8), st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
        lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=5), c, max_size=4),
        max_leaves=20), max_size=6).map(lambda d: json.dumps(d).encode() + b"\n"),
    st.fixed_dictionaries({"netprobe": st.sampled_from([1, 2, "1", None]),
                           "kind": st.sampled_from(["oneway", "x", 1, None]),
                           "auth": st.one_of(st.text(max_size=70), st.integers(), st.none())})
    .map(lambda d: json.dumps(d).encode() + b"\n"),
), st.integers(1, 64), st.booleans())
def test_server_machine_never_raises(data, cut, keyed):
    """Any bytes, in any chunking: the machine answers with at most one event and at most one
    line to send, and never accepts a keyed hello without the proof."""
    s = server(KEY if keyed else None)
    s.data_to_send()
    events = []
    for i in range(0, len(data), cut):
        events += s.receive_data(data[i:i + cut], 0.1)
    events += s.tick(5.0)
    assert len(events) <= 1
    if keyed:
        assert not any(isinstance(e, P.Hello) for e in events)
    out = s.data_to_send()
    assert out.count(b"\n") <= 1
    if out:
        assert json.loads(out)["ok"] is False


# -- client handshake --------------------------------------------------------------------------

def test_client_and_server_agree_with_a_key():
    c = P.ClientHandshake("oneway", {"session": "ab" * 8, "nports": 2}, KEY, 0.0, 5.0)
    s = server(KEY)
    c_ev, s_ev = run_pair(c, s)
    assert s_ev == [P.Hello("oneway", {"netprobe": 1, "kind": "oneway", "session": "ab" * 8, "nports": 2})]
    assert c_ev == [] and c.state is P.State.AWAIT_REPLY
    assert c.hello["auth"] == expected_mac(KEY, NONCE, c.hello)
    ev = c.receive_data(P.encode({"ok": True, "ticket": "t"}) + b'{"udp_port": 5}\n', 0.2)
    assert ev == [P.Accepted({"ok": True, "ticket": "t"}, NONCE)]
    assert c.trailing == b'{"udp_port": 5}\n'


def test_client_with_wrong_key_is_refused():
    c = P.ClientHandshake("oneway", {}, b"another-key-16-bytes", 0.0, 5.0)
    s = server(KEY)
    c_ev, s_ev = run_pair(c, s)
    assert s_ev[0].counter == "bad_auth"
    assert c_ev == [P.Rejected("authentication failed")] and c.state is P.State.CLOSED


def test_client_without_key_facing_a_challenge():
    c = P.ClientHandshake("oneway", {}, None, 0.0, 5.0)
    ev = c.receive_data(server(KEY).data_to_send(), 0.0)
    assert ev == [P.Rejected("the peer asks for a shared key and none is configured")]
    assert c.data_to_send() == b""


def test_client_refusal_text_is_cleaned():
    c = P.ClientHandshake("oneway", {}, None, 0.0, 5.0)
    ev = c.receive_data(b'{"ok": false, "error": "busy\\r\\u001b[2J' + b"x" * 500 + b'"}\n', 0.0)
    (r,) = ev
    assert "\r" not in r.error and "\x1b" not in r.error and len(r.error) <= P.ERROR_MAX


@pytest.mark.parametrize("greeting,text", [
    (b"SSH-2.0-OpenSSH\n", "not a netprobe peer"),
    (b'{"netprobe": 2, "nonce": "' + NONCE.encode() + b'"}\n', "not a netprobe protocol 1 peer"),
    (b'{"netprobe": 1}\n', "no valid nonce"),
    (b'{"netprobe": 1, "nonce": "' + NONCE.encode() + b'", "challenge": 7}\n', "challenge is not 32 hex"),
    (b"x" * 5000, "longer than 4096"),
    (b"", "closed during the handshake"),
])
def test_client_refuses_what_is_not_a_peer(greeting, text):
    c = P.ClientHandshake("oneway", {}, KEY, 0.0, 5.0)
    (ev,) = c.receive_data(greeting, 0.0)
    assert isinstance(ev, P.Rejected) and text in ev.error


def test_client_deadline():
    c = P.ClientHandshake("oneway", {}, None, 0.0, 5.0)
    assert c.receive_data(b'{"netprobe": 1, "no', 4.0) == []
    assert c.tick(5.0) == [P.Rejected("handshake timed out")]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=5000), st.integers(1, 50))
def test_client_machine_never_raises(data, cut):
    c = P.ClientHandshake("capacity", {}, KEY, 0.0, 5.0)
    events = []
    for i in range(0, len(data), cut):
        events += c.receive_data(data[i:i + cut], 1.0)
    assert len(events) <= 1


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(min_size=1, max_size=10).filter(lambda k: k not in ("netprobe", "kind", "auth")),
                       st.one_of(st.integers(-2**70, 2**70), st.floats(allow_nan=False, allow_infinity=False),
                                 st.text(max_size=10), st.booleans(), st.none()), max_size=8),
       st.binary(min_size=16, max_size=40))
def test_any_fields_roundtrip_with_auth(fields, key):
    """Whatever fields the client sends, the server verifies the proof over them (the canonical
    form survives a JSON round trip) and hands them over unchanged."""
    c = P.ClientHandshake("throughput", fields, key, 0.0, 5.0)
    s = server(key)
    _, s_ev = run_pair(c, s)
    if len(P.encode(c.hello)) > P.HELLO_MAX + 1:
        return
    assert s_ev == [P.Hello("throughput", {"netprobe": 1, "kind": "throughput", **fields})]


def test_session_key_matches_its_definition():
    want = hmac.new(KEY, b"netprobe oneway v2 session key:" + b"00000000000000aa", hashlib.sha256).digest()
    assert P.session_key(KEY, "00000000000000aa") == want


def test_protocol_module_does_no_io():
    import ast
    import inspect
    tree = ast.parse(inspect.getsource(P))
    names = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
             for a in n.names} | {n.module.split(".")[0] for n in ast.walk(tree)
                                  if isinstance(n, ast.ImportFrom) and n.module}
    assert not names & {"socket", "threading", "time", "select", "selectors", "asyncio", "os", "_thread"}
