"""Job updates on a running worker's stdin (worker.take_updates) and what a oneway peers worker
takes from them: a new peers list only; anything else, or anything malformed, is one ERROR
record and the running settings are kept; the same for the peer side's mesh versions. The
supervisor's side: which changes go live."""
import io
import json
import string

from hypothesis import given, settings
from hypothesis import strategies as st

from netprobe import serve
from netprobe.config.load import ProbeSpec, build_probe_config
from netprobe.config.schema import Where
from netprobe.peer.server import MESH_VERSION_RE
from netprobe.probes.oneway.runner import Runner
from netprobe.supervisor.daemon import live_change
from netprobe.supervisor.worker import MAX_JOB, MESH_ALSO_MAX, probe_update, serve_update, take_updates

BASE = {"kind": "oneway", "name": "fleet", "interval": "1s", "gap": "20ms", "ecmp_width": 1,
        "peers": ["a=127.0.0.1:7000", "b=127.0.0.2:7000"]}


def _job(**table):
    return {"kind": "oneway", "table": {**BASE, **table}, "file": "x.toml", "index": 0}


def _runner():
    cfg = build_probe_config("oneway", BASE, Where("x.toml", "probe[0]"))
    return Runner(cfg, lambda rec: None)


def _run(lines):
    runner, out = _runner(), []
    take_updates(io.StringIO("".join(lines)), _job(), probe_update("oneway", runner), out.append)
    taken = []
    while not runner.fleet.changes.empty():
        taken.append(runner.fleet.changes.get())
    return taken, [r.fields["error"] for r in out]


def test_a_peers_change_is_taken_and_other_changes_are_refused():
    new = ["a=127.0.0.1:7000", "c=127.0.0.3:7000"]
    taken, errors = _run([json.dumps(_job(peers=new)) + "\n",
                          json.dumps(_job(peers=new, interval="2s")) + "\n",
                          json.dumps(_job(peers=[], peer="127.0.0.9:7000")) + "\n",
                          json.dumps({**_job(), "kind": "udping"}) + "\n",
                          "{not json\n",
                          json.dumps(_job(peers=["a=127.0.0.1:7000", "a=127.0.0.3:7000"])) + "\n"])
    assert [t.peer_list() for t in taken] == [[("a", "127.0.0.1:7000"), ("c", "127.0.0.3:7000")]]
    assert len(errors) == 5 and all(e.startswith("update not applied, running the previous settings: ")
                                    for e in errors), errors
    assert "only peers, not interval" in errors[0]
    assert "keep a peers list" in errors[1] and "not a oneway job" in errors[2]
    assert "line 1 column 2" in errors[3] and '"a" is named twice' in errors[4]


def test_an_overlong_line_is_one_error_and_the_next_line_is_read():
    new = ["c=127.0.0.3:7000"]
    taken, errors = _run(["x" * (MAX_JOB + 10) + "\n", json.dumps(_job(peers=new)) + "\n"])
    assert len(errors) == 1 and f"longer than {MAX_JOB} bytes" in errors[0]
    assert [t.peers for t in taken] == [tuple(new)]


entry = st.builds(lambda n, a, p: f"{n}=127.0.0.{a}:{p}", st.sampled_from("abcd"), st.integers(1, 4),
                  st.integers(7000, 7001))
change = st.fixed_dictionaries({}, optional={"peers": st.lists(entry, max_size=4),
                                             "interval": st.sampled_from(["1s", "2s", 1, "x"]),
                                             "gap": st.sampled_from(["20ms", "10ms", -1]),
                                             "name": st.sampled_from(["fleet", "other"]),
                                             "bogus": st.integers()})
line = st.one_of(
    change.map(lambda c: json.dumps(_job(**c))),
    st.builds(lambda c, k: json.dumps({**_job(**c), "kind": k}), change, st.sampled_from(["oneway", "udping", 3])),
    st.builds(lambda t: json.dumps({"kind": "oneway", "table": t}), st.one_of(st.none(), st.integers(), st.text())),
    st.text(alphabet=string.printable.replace("\n", ""), max_size=40),
    st.binary(max_size=40).map(lambda b: b.decode("latin-1").replace("\n", "")))


@given(st.lists(line, max_size=6))
@settings(max_examples=150, deadline=None)
def test_every_line_is_taken_or_one_error(lines):
    """Structured fuzz: each line is either taken (then it differs from the running settings in its
    peers list only, a valid one) or one ERROR record; nothing escapes take_updates."""
    taken, errors = _run([x + "\n" for x in lines])
    assert len(taken) + len(errors) == len(lines)
    base = _runner().cfg
    for cfg in taken:
        assert cfg.peers and len({n for n, _ in cfg.peer_list()}) == len(cfg.peers)
        assert {k: v for k, v in vars(cfg).items() if k != "peers"} == \
            {k: v for k, v in vars(base).items() if k != "peers"}


def _spec(**table):
    t = {**BASE, **table}
    return ProbeSpec("oneway", build_probe_config("oneway", t, Where("x", "p")), t, 0)


def test_only_a_peers_change_goes_live():
    assert live_change(_spec(), _spec(peers=["c=127.0.0.3:7000"]))
    assert not live_change(_spec(), _spec(peers=["c=127.0.0.3:7000"], interval="2s"))
    single = {k: v for k, v in BASE.items() if k != "peers"}
    old = ProbeSpec("oneway", None, {**single, "peer": "127.0.0.1:7000"}, 0)
    assert not live_change(old, _spec())                    # one peer to several: a new worker
    assert not live_change(ProbeSpec("udping", None, {"kind": "udping", "peers": ["x"]}, 0),
                           ProbeSpec("udping", None, {"kind": "udping", "peers": ["y"]}, 0))


SERVE_TABLE = {"listen": ["127.0.0.1:0"]}
version = st.one_of(st.sampled_from(["v1", "v2", "0123abcd"]), st.text(max_size=6), st.integers(), st.none())


@given(st.lists(st.fixed_dictionaries({}, optional={"mesh": version,
                                                    "mesh_also": st.one_of(version, st.lists(version, max_size=4))}),
                max_size=5))
@settings(max_examples=100, deadline=None)
def test_the_peer_sides_mesh_versions_are_taken_or_one_error(changes):
    """Structured fuzz of the peer side's update line: the mesh version in effect and the other
    versions it serves (at most the pending and the replaced one) are taken whole, or it is one
    ERROR and the running ones stay."""
    server = serve.Server([("127.0.0.1", 0)])
    try:
        server.set_mesh("v0", ("vx",))
        out, running, refused = [], ("v0", ("vx",)), 0
        lines = "".join(json.dumps({"kind": "serve", "table": SERVE_TABLE, **c}) + "\n" for c in changes)
        take_updates(io.StringIO(lines), {"kind": "serve", "table": SERVE_TABLE},
                     serve_update(server, SERVE_TABLE), out.append)
        for c in changes:
            mesh, also = c.get("mesh"), c.get("mesh_also", [])
            good = (mesh is None or isinstance(mesh, str) and MESH_VERSION_RE.fullmatch(mesh)) and \
                isinstance(also, list) and len(also) <= MESH_ALSO_MAX and \
                all(isinstance(v, str) and MESH_VERSION_RE.fullmatch(v) for v in also)
            if good:
                running = (mesh, tuple(also))
            refused += not good
        assert (server.mesh_version, server.mesh_also) == running
        assert len(out) == refused and all(r.fields["error"].startswith("update not applied") for r in out)
    finally:
        for s in server.socks:
            s.close()
