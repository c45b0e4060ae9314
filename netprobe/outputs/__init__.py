"""Sink registry: [output.<name>] tables -> validated configs -> SinkRunners.

The sink type is the table's `type` key, or the table name when `type` is
absent, so `[output.stdout]` just works and `[output.alerts] type = "syslog"`
adds a second syslog sink. `validate_outputs` is what check-config and a
SIGHUP reload run; `build_sinks` additionally builds the (unstarted) runners.
"""
import difflib
import os
from dataclasses import dataclass

from netprobe.config.schema import INT, STR_LIST, Where, build, setting, toml_key
from netprobe.errors import ConfigError
from netprobe.outputs.base import Sink, SinkRunner
from netprobe.results import EVENT_TYPES
from netprobe.units import show


@dataclass(frozen=True)
class SinkConfig:
    """Settings every [output.<name>] table accepts, besides `type`."""
    types: tuple = setting(STR_LIST, EVENT_TYPES,
                           "record types this sink takes (default: all of " + ", ".join(EVENT_TYPES) + ")")
    queue: int = setting(INT, 10000, "records buffered for this sink before new ones are dropped and counted",
                         min=10, max=1_000_000)

    def check(self, where):
        """Cross-field validation; sink configs extend it. Raise where.error(key, msg)."""
        valid = ", ".join(EVENT_TYPES)
        if not self.types:
            raise where.error("types", f"[] is empty (list at least one of: {valid})")
        for t in self.types:
            if t not in EVENT_TYPES:
                raise where.error("types", f"{show(t)} is not a record type (valid: {valid})")


class TypedSinkRunner(SinkRunner):
    """A SinkRunner that queues only the record types its config asks for."""

    def __init__(self, sink, cfg):
        super().__init__(sink, cfg.queue)
        self.types = frozenset(cfg.types)

    def submit(self, record):
        """Queue a record this sink takes; others are ignored (not counted as dropped)."""
        if record.type not in self.types:
            return True
        return super().submit(record)


def _registry():
    # Imported here, after SinkConfig exists: each sink module subclasses it.
    from netprobe.outputs.alertmanager import AlertmanagerConfig, AlertmanagerSink
    from netprobe.outputs.elasticsearch import ElasticsearchConfig, ElasticsearchSink
    from netprobe.outputs.jsonfile import JsonFileConfig, JsonFileSink
    from netprobe.outputs.prometheus import PrometheusConfig, PrometheusSink
    from netprobe.outputs.statsd import StatsdConfig, StatsdSink
    from netprobe.outputs.stdout import StdoutConfig, StdoutSink
    from netprobe.outputs.syslog import SyslogConfig, SyslogSink
    return {
        "stdout": (StdoutConfig, StdoutSink),
        "syslog": (SyslogConfig, SyslogSink),
        "jsonfile": (JsonFileConfig, JsonFileSink),
        "prometheus": (PrometheusConfig, PrometheusSink),
        "alertmanager": (AlertmanagerConfig, AlertmanagerSink),
        "statsd": (StatsdConfig, StatsdSink),
        "elasticsearch": (ElasticsearchConfig, ElasticsearchSink),
    }


SINK_TYPES = _registry()


def _sink_type(name, table, where):
    valid = ", ".join(sorted(SINK_TYPES))
    if "type" not in table:
        if name in SINK_TYPES:
            return name
        raise where.error(None, f'{show(name)} is not a sink type (valid: {valid}); '
                                f'name the table after one or set type = "..." in it')
    kind = table["type"]
    if isinstance(kind, str) and kind in SINK_TYPES:
        return kind
    close = difflib.get_close_matches(kind, list(SINK_TYPES), n=1) if isinstance(kind, str) else []
    hint = f'; did you mean "{close[0]}"?' if close else ""
    raise where.error("type", f"{show(kind)} is not a sink type (valid: {valid}){hint}")


def validate_outputs(tables, file):
    """Validate every [output.<name>] table; return {name: config} (no sinks built)."""
    if not isinstance(tables, dict):
        raise ConfigError(f"{show(tables)} is not a table of [output.<name>] tables", file=file, path="output")
    configs = {}
    for name, table in tables.items():
        where = Where(file, f"output.{toml_key(name)}")
        if not isinstance(table, dict):
            raise where.error(None, f"{show(table)} is not a table")
        cfg_cls, _ = SINK_TYPES[_sink_type(name, table, where)]
        configs[name] = build(cfg_cls, table, where, ignore=("type",))
    _check_shared_files(configs, file)
    return configs


def _check_shared_files(configs, file):
    """Two jsonfile sinks on one path would interleave and rotate each other's files."""
    jsonfile_config = SINK_TYPES["jsonfile"][0]
    seen = {}
    for name, cfg in configs.items():
        if isinstance(cfg, jsonfile_config):
            path = os.path.abspath(cfg.path)
            if path in seen:
                raise ConfigError(f"{show(cfg.path)} is already the path of output.{toml_key(seen[path])}",
                                  file=file, path=f"output.{toml_key(name)}.path")
            seen[path] = name


def build_sinks(tables, file):
    """Validate the [output.*] tables and return one unstarted TypedSinkRunner per table."""
    sink_for = {cfg_cls: sink_cls for cfg_cls, sink_cls in SINK_TYPES.values()}
    return [TypedSinkRunner(sink_for[type(cfg)](cfg, name), cfg)
            for name, cfg in validate_outputs(tables, file).items()]


__all__ = ["SINK_TYPES", "Sink", "SinkConfig", "SinkRunner", "TypedSinkRunner", "build_sinks",
           "validate_outputs"]
