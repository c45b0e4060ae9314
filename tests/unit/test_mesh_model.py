"""The mesh file: hosts, tests and their pairs from TOML; every mistake one line naming the TOML path."""
import copy
import itertools
import pathlib
import tomllib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netprobe.errors import ConfigError
from netprobe.mesh import model

EXAMPLE = pathlib.Path(model.__file__).parent.parent / "config" / "mesh-example.toml"


def doc(n_sites=3, per_site=3):
    hosts = [{"name": f"{s}{i}", "address": f"10.{k}.{i}.1", "tags": {"site": s, "rack": f"{s}-r{i % 2}"}}
             for k, s in enumerate(["fra", "ams", "lon", "nyc", "sfo"][:n_sites]) for i in range(per_site)]
    return {"host": hosts, "test": [
        {"kind": "oneway", "between": "all", "gap": "10ms"},
        {"kind": "throughput", "between": "site", "rate": "1G", "duration": "20s", "every": "1h",
         "exclusive_by": ["host", "site"]}]}


def test_example_file_loads_every_key_it_documents():
    mesh = model.load_file(str(EXAMPLE))
    raw = tomllib.loads(EXAMPLE.read_text())
    assert [h.name for h in mesh.hosts] == [h["name"] for h in raw["host"]]
    assert {t.kind for t in mesh.tests} == {"oneway", "throughput", "capacity"}
    assert mesh.schedule.guard == pytest.approx(2 * 0.1 + 2.0)


def test_between_all_is_every_unordered_pair_once():
    mesh = model.load_dict(doc())
    names = [h["name"] for h in doc()["host"]]
    pairs = mesh.tests[0].pairs
    assert {frozenset(p) for p in pairs} == {frozenset(c) for c in itertools.combinations(names, 2)}
    assert len(pairs) == len(names) * (len(names) - 1) // 2


@pytest.mark.parametrize("n_sites,per_site", [(2, 1), (3, 3), (5, 2), (4, 7)])
def test_between_site_is_one_pair_per_site_pair(n_sites, per_site):
    d = doc(n_sites, per_site)
    site = {h["name"]: h["tags"]["site"] for h in d["host"]}
    pairs = model.load_dict(d).tests[1].pairs
    seen = [frozenset((site[a], site[b])) for a, b in pairs]
    sites = sorted(set(site.values()))
    assert sorted(map(sorted, seen)) == sorted(map(sorted, map(frozenset, itertools.combinations(sites, 2))))
    if per_site > 1 and n_sites > 2:              # the load spreads: more than one host per site used
        used = {h for p in pairs for h in p}
        assert len(used) > n_sites


def test_version_ignores_comments_order_and_spacing_but_not_values():
    text = EXAMPLE.read_text()
    a = model.load_bytes(text.encode())
    b = model.load_bytes(("# another comment\n" + text.replace(" = ", "=")).encode())
    assert a.version == b.version
    d = tomllib.loads(text)
    d["host"][0]["address"] = "192.0.2.99"
    assert model.load_dict(d).version != a.version
    reordered = {k: d[k] for k in reversed(list(d))}
    assert model.load_dict(reordered).version == model.load_dict(d).version


def _set(path, value):
    def edit(d):
        node = d
        for k in path[:-1]:
            node = node[k]
        if value is KeyError:
            del node[path[-1]]
        else:
            node[path[-1]] = value
    return edit


BAD = [
    (_set(["hosts"], []), "hosts: unknown key; did you mean 'host'?"),
    (_set(["host", 1, "name"], "fra0"), 'host[1].name: "fra0" is already host[0]'),
    (_set(["host", 1, "name"], "a b"), "host[1].name:"),
    (_set(["host", 1, "address"], "10.0.0.1"), 'host[1].address: "10.0.0.1" is already host[0]'),
    (_set(["host", 1, "address"], "10.0.0.1:99999"), "host[1].address:"),
    (_set(["host", 0, "tags"], {"host": "x"}), "host[0].tags.host: is not a tag name"),
    (_set(["host", 0, "tags"], {"site": "a\nb"}), "host[0].tags.site:"),
    (_set(["host", 0, "tags"], "fra"), "host[0].tags:"),
    (_set(["host", 2, "addr"], "x"), "host[2].addr: unknown key"),
    (_set(["host", 2, "name"], KeyError), "host[2].name: missing"),
    (_set(["test", 0, "kind"], "flows"), 'test[0].kind: "flows" is not a test kind'),
    (_set(["test", 0, "kind"], KeyError), "test[0].kind: missing"),
    (_set(["test", 0, "name"], "x"), "test[0].name: is derived from the mesh"),
    (_set(["test", 0, "peer"], "x"), "test[0].peer: is derived from the mesh"),
    (_set(["test", 0, "peers"], ["a=192.0.2.1"]), "test[0].peers: is derived from the mesh"),
    (_set(["test", 0, "gap"], "fast"), 'test[0].gap: "fast" is not a duration'),
    (_set(["test", 0, "gapp"], "1ms"), "test[0].gapp: unknown key; did you mean 'gap'?"),
    (_set(["test", 0, "every"], "1h"), "test[0].every: applies to exclusive kinds only"),
    (_set(["test", 0, "between"], "rack"), 'test[0].between: "rack" is not one of'),
    (_set(["test", 0, "pairs"], [["fra0", "ams0"]]), "test[0]: needs exactly one of"),
    (_set(["test", 1, "duration"], KeyError), "test[1].duration: missing"),
    (_set(["test", 1, "every"], "10s"), "test[1].every: must be at least duration"),
    (_set(["test", 1, "duration"], "5s"), "test[1].duration: must be at least the interval"),
    (_set(["test", 1, "exclusive_by"], ["host", "row"]), 'test[1].exclusive_by: "row" is neither'),
    (_set(["test", 1, "exclusive_by"], "site"), "test[1].exclusive_by:"),
    (_set(["test", 1, "rate"], KeyError), "test[1].rate: missing"),
    (_set(["test", 1, "between"], KeyError), "test[1]: needs exactly one of"),
    (_set(["schedule"], {"clock_error": "-1s"}), "schedule.clock_error:"),
    (_set(["schedule"], {"rollout": "soon"}), "schedule.rollout:"),
    (_set(["schedule"], {"rollout": "200h"}), "schedule.rollout: \"200h\" is out of range"),
]


@pytest.mark.parametrize("edit,expected", BAD, ids=[b[1][:40] for b in BAD])
def test_bad_file_is_one_line_naming_the_path(edit, expected):
    d = doc()
    edit(d)
    with pytest.raises(ConfigError) as exc:
        model.load_dict(d, "mesh.toml")
    msg = str(exc.value)
    assert "\n" not in msg
    assert msg.startswith("mesh.toml: ") and expected in msg, msg


@pytest.mark.parametrize("pairs,expected", [
    ([["fra0", "nowhere"]], 'pairs[0]: "nowhere" is not a [[host]] name'),
    ([["fra0", "fra0"]], "pairs[0]: a host cannot test itself"),
    ([["fra0", "ams0"], ["ams0", "fra0"]], "pairs[1]: the same hosts as pairs[0]"),
    ([["fra0"]], "pairs[0]:"),
    ("fra0", "test[1].pairs:"),
])
def test_bad_pairs(pairs, expected):
    d = doc()
    del d["test"][1]["between"]
    d["test"][1]["pairs"] = pairs
    with pytest.raises(ConfigError, match=None) as exc:
        model.load_dict(d, "m.toml")
    assert expected in str(exc.value)


def test_site_pairs_need_a_site_on_every_host():
    d = doc()
    del d["host"][4]["tags"]["site"]
    with pytest.raises(ConfigError, match=r'test\[1\]\.between: "site" needs tags.site on every host; host "ams1"'):
        model.load_dict(d, "m.toml")


def test_explicit_pairs_keep_direction():
    d = doc()
    del d["test"][1]["between"]
    d["test"][1]["pairs"] = [["lon2", "fra0"], ["ams1", "lon0"]]
    assert model.load_dict(d).tests[1].pairs == (("lon2", "fra0"), ("ams1", "lon0"))


def test_unreadable_and_non_utf8_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        model.load_file(str(tmp_path / "absent.toml"))
    with pytest.raises(ConfigError, match=r"not UTF-8 text \(byte 0\)"):
        model.load_bytes(b"\xff[[host]]", "m.toml")
    with pytest.raises(ConfigError, match="invalid TOML"):
        model.load_bytes(b"[[host]\n", "m.toml")


# ---- structured fuzz: any document gives a Mesh or one ConfigError line ----------------------------
KEYS = ["name", "address", "tags", "kind", "between", "pairs", "duration", "every", "exclusive_by",
        "rate", "gap", "interval", "site", "host", "clock_error", "x"]
scalars = st.one_of(st.text(max_size=8), st.integers(-10**6, 10**6), st.floats(allow_nan=True), st.booleans(),
                    st.sampled_from(["all", "site", "oneway", "throughput", "capacity", "fra0", "ams0",
                                     "10.0.0.1", "20s", "1h", "1G", "host", "10ms"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                      st.dictionaries(st.sampled_from(KEYS), inner, max_size=3)),
                      max_leaves=10)
tables = st.dictionaries(st.sampled_from(KEYS), values, max_size=6)


@st.composite
def mutated(draw):
    d = doc(draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    for _ in range(draw(st.integers(1, 4))):
        section = draw(st.sampled_from(["host", "test"]))
        i = draw(st.integers(0, len(d[section]) - 1))
        d[section][i][draw(st.sampled_from(KEYS))] = draw(values)
    if draw(st.booleans()):
        d[draw(st.sampled_from(["host", "test", "schedule", "x"]))] = draw(values | st.lists(tables, max_size=3))
    return d


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_structured_fuzz_gives_a_mesh_or_one_line(d):
    try:
        mesh = model.load_dict(copy.deepcopy(d), "m.toml")
    except ConfigError as exc:
        assert str(exc).startswith("m.toml") and "\n" not in str(exc)
        return
    names = {h.name for h in mesh.hosts}
    for t in mesh.tests:
        assert all(a in names and b in names and a != b for a, b in t.pairs)
