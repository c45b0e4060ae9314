"""Read a TOML file into a validated Config.

The same function serves start-up, `netprobe check-config` and SIGHUP, so a
file that passes check-config is exactly what the daemon will run. Errors
are ConfigError one-liners: file, TOML path, value, what is valid.
"""
import copy
import dataclasses
import ipaddress
import tomllib
from dataclasses import dataclass, field

from netprobe import outputs, probes, redact
from netprobe.config import schema
from netprobe.config.defaults import DEFAULT_OUTPUTS, DaemonConfig
from netprobe.errors import ConfigError
from netprobe.units import show

TOP_LEVEL = ("daemon", "serve", "probe", "output", "peer", "mesh")


@dataclass(frozen=True)
class PeerConfig:
    """A [peer.NAME] table: a netprobe peer (`netprobe serve`) probes can name."""
    address: str = schema.setting(schema.STR, "", "HOST or HOST:PORT of the peer", required=True)
    key: str = schema.setting(schema.STR, "", "shared key for the handshake, if the peer asks for one")

    def check(self, where):
        from netprobe.serve import split_address
        try:
            host, _ = split_address(self.address)
        except ValueError:
            host = ""
        if not host or any(c.isspace() for c in host):
            raise where.error("address", f'"{self.address}" is not HOST or HOST:PORT')


@dataclass(frozen=True)
class ProbeSpec:
    """One [[probe]] entry: its kind, validated settings, and the table as written."""
    kind: str
    config: object
    table: dict
    index: int
    label: str = ""             # the worker's name when the config has none (the [serve] worker)

    @property
    def name(self):
        return self.label or self.config.name


@dataclass(frozen=True)
class Config:
    file: str
    daemon: DaemonConfig
    probes: tuple
    outputs: dict                  # output name -> sink config dataclass
    output_tables: dict            # output name -> table as written (sinks are built from it)
    peers: dict                    # peer name -> PeerConfig
    serve: object = None           # serve.ServeConfig when the file has a [serve] table
    serve_table: dict = None
    mesh: object = None            # mesh.fetch.MeshConfig when the file has a [mesh] table
    supplied: dict = field(repr=False, default_factory=dict)     # the document as written, keys redacted

    def effective(self):
        """Every setting with defaults filled in, JSON-serialisable (for run headers)."""
        return redact.redact({
            "daemon": _plain(dataclasses.asdict(self.daemon)),
            "probe": [{"kind": p.kind, **_plain(dataclasses.asdict(p.config))} for p in self.probes],
            "output": {n: _plain(dataclasses.asdict(c)) for n, c in self.outputs.items()},
            "peer": {n: _plain(dataclasses.asdict(c)) for n, c in self.peers.items()},
            "serve": None if self.serve is None else _plain(dataclasses.asdict(self.serve)),
            "mesh": None if self.mesh is None else dataclasses.asdict(self.mesh),
        })


def _plain(d):
    out = {}
    for k, v in d.items():
        if isinstance(v, tuple):
            v = [str(x) if isinstance(x, (ipaddress.IPv4Network, ipaddress.IPv6Network)) else x for x in v]
        out[k] = v
    return out


def load_file(path):
    return load_dict(read_toml(path), path)


def read_toml(path):
    """A TOML file as a document, or a ConfigError naming the file (unreadable, not UTF-8, not TOML)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror}", file=path) from None
    return parse_toml(data, path)


def parse_toml(data, file):
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text (byte {exc.start})", file=file) from None
    return _toml(text, file)


def _toml(text, file):
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"invalid TOML: {exc}", file=file) from None


def load_text(text, file="<config>"):
    return load_dict(_toml(text, file), file)


def load_dict(doc, file="<config>"):
    root = schema.Where(file, "")
    for key in doc:
        if key not in TOP_LEVEL:
            raise schema.unknown_key_error(key, TOP_LEVEL, root)
    daemon = schema.build(DaemonConfig, doc.get("daemon", {}), schema.Where(file, "daemon"))
    peers = _load_peers(doc.get("peer", {}), file)
    probe_specs = _load_probes(doc.get("probe", []), file, daemon, peers)
    out_tables = doc.get("output", DEFAULT_OUTPUTS)
    if not isinstance(out_tables, dict):
        raise ConfigError("must be tables: [output.NAME]", file=file, path="output")
    out_cfgs = outputs.validate_outputs(out_tables, file)
    serve_cfg = None
    if "serve" in doc:
        from netprobe.serve import ServeConfig
        serve_cfg = schema.build(ServeConfig, doc["serve"], schema.Where(file, "serve"))
    mesh_cfg = None
    if "mesh" in doc:
        from netprobe.mesh.fetch import MeshConfig
        mesh_cfg = schema.build(MeshConfig, doc["mesh"], schema.Where(file, "mesh"))
    return Config(file, daemon, tuple(probe_specs), out_cfgs, copy.deepcopy(out_tables), peers,
                  serve_cfg, copy.deepcopy(doc.get("serve")), mesh_cfg, redact.redact(doc))


def _load_peers(tables, file):
    if not isinstance(tables, dict):
        raise ConfigError("must be tables: [peer.NAME]", file=file, path="peer")
    peers = {}
    for name, table in tables.items():
        peers[name] = schema.build(PeerConfig, table, schema.Where(file, f"peer.{schema.toml_key(name)}"))
    return peers


def _load_probes(entries, file, daemon, peers):
    if not isinstance(entries, list):
        raise ConfigError("must be an array of tables: [[probe]]", file=file, path="probe")
    if len(entries) > daemon.max_probes:
        raise ConfigError(f"{len(entries)} probes exceed daemon.max_probes = {daemon.max_probes}",
                          file=file, path="probe")
    specs, seen = [], {}
    for i, table in enumerate(entries):
        where = schema.Where(file, f"probe[{i}]")
        if not isinstance(table, dict):
            raise where.error(None, "must be a table")
        if "kind" not in table:
            raise where.error("kind", f"missing (one of: {', '.join(probes.KINDS)})")
        kind = table["kind"]
        if not isinstance(kind, str) or kind not in probes.KINDS:
            raise where.error("kind", f"{show(kind)} is not a probe kind "
                                      f"(valid: {', '.join(probes.KINDS)})")
        cfg = build_probe_config(kind, table, where)
        if cfg.name in seen:
            raise where.error("name", f'"{cfg.name}" is already used by probe[{seen[cfg.name]}]; '
                                      "names must be unique")
        seen[cfg.name] = i
        table = dict(table)
        peer = getattr(cfg, "peer", None)
        if peer in peers:                     # the worker gets the address and key themselves
            table["peer"] = peers[peer].address
            if not table.get("key") and peers[peer].key:
                table["key"] = peers[peer].key
            cfg = build_probe_config(kind, table, where)
        elif peer and not _looks_like_address(peer):
            known = ", ".join(sorted(peers)) or "none defined"
            raise where.error("peer", f'"{peer}" is neither a [peer.NAME] table ({known}) nor HOST[:PORT]')
        for name, address in getattr(cfg, "peer_list", list)():
            if not _looks_like_address(address):
                raise where.error("peers", f'"{name}={address}": "{address}" is not HOST[:PORT] (a [peer.NAME] '
                                           "table goes with peer)")
        specs.append(ProbeSpec(kind, cfg, table, i))
    return specs


def build_probe_config(kind, table, where):
    module = probes.load(kind)
    return schema.build(module.Config, table, where, ignore=("kind",))


def _looks_like_address(text):
    """HOST[:PORT] that cannot be a mistyped [peer.NAME]: an IP, a dotted name, localhost, or a port given."""
    from netprobe.serve import split_address
    try:
        host, _ = split_address(text)
    except ValueError:
        return False
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        return "." in host or host == "localhost" or text != host
