"""Reloads must not keep what they replace alive.

A SIGHUP that changes an [output.*] table replaces every sink. Each replaced sink
holds its queue, its threads' state and (Prometheus) every series it collected, so
one kept alive per reload is memory that grows with every edit of the outputs for
as long as the daemon runs. The oracle is the garbage collector: a weak reference to
each replaced sink must be dead once the reload is done.
"""
import gc
import weakref

from netprobe.config.load import load_file
from netprobe.outputs.prometheus import PrometheusSink
from netprobe.supervisor.daemon import Supervisor

RELOADS = 20


def _config(path, expire):
    path.write_text(f"""
[[probe]]
kind = "host"
name = "self"
interval = "1s"
require_clock_sync = false

[output.file]
type = "jsonfile"
path = "{path.parent / 'out.jsonl'}"

[output.prom]
type = "prometheus"
listen = "127.0.0.1:0"
expire = "{expire}m"
""")
    return path


def test_sinks_replaced_by_reloads_are_freed(tmp_path):
    cfg = _config(tmp_path / "n.toml", 10)
    sup = Supervisor(load_file(str(cfg)))
    sup.sinks = sup._start_sinks(sup.config)
    replaced = []
    try:
        sup._report_drops()                       # the periodic DROPS check has seen every sink
        for i in range(RELOADS):
            replaced += [weakref.ref(s) for s in sup.sinks]
            _config(cfg, 11 + i)                  # a changed [output.prom]: every sink is rebuilt
            assert sup.reload()
            sup._report_drops()
        gc.collect()
        alive = [r() for r in replaced if r() is not None]
        assert alive == [], f"{len(alive)} of {len(replaced)} replaced sinks still referenced"
        prom_sinks = [o for o in gc.get_objects() if isinstance(o, PrometheusSink)]
        assert len(prom_sinks) == 1               # only the running one
    finally:
        sup._close_sinks(sup.sinks)
