"""The `netprobe` command: run the daemon, check a config, run one probe, serve peers."""
import argparse
import json
import os
import sys

from netprobe import __version__, probes, redact
from netprobe.config import schema
from netprobe.errors import EXIT_OK, EXIT_USAGE, NetprobeError, UsageError
from netprobe.units import parse_duration

EPILOG = """\
examples:
  netprobe run -c /etc/netprobe/netprobe.toml            run the daemon in the foreground
  netprobe run -c netprobe.toml --duration 30s --json    30 s, results as JSON lines
  netprobe run -c netprobe.toml --daemon --pidfile /run/netprobe.pid
  netprobe check-config netprobe.toml                    validate, print the effective config
  netprobe probe host --interval 1s --duration 5s        one probe, once, same engine as the daemon
  netprobe selftest timer --interval 1ms --duration 5s   how late does this host wake timers?
  netprobe serve                                         the peer side for probes that need one

exit codes: 0 ok, 1 runtime error, 2 usage or config error, 3 second signal during shutdown
"""


class Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line and exit code 2."""

    def error(self, message):
        raise UsageError(f"{self.prog}: {message} (see --help)")


def _duration_arg(text):
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_probe_options(sub, kind):
    module = probes.load(kind)
    rows = schema.describe(module.Config)
    required = {f.name for f in schema.fields(module.Config) if f.metadata["required"]}
    p = sub.add_parser(kind, help=module.SUMMARY, description=module.SUMMARY,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=f"example:\n  {module.EXAMPLE}\n")

    def helptext(name, kind_, default, doc):
        if name in required:
            return f"{doc} (required)"
        if "default:" in doc:                 # the doc states a derived default itself
            return doc
        return f"{doc} (default: {schema.default_text(kind_, default).replace('%', '%%')})"

    for name, kind_, default, doc in rows:
        opt = "--" + name.replace("_", "-")
        doc = doc.replace("%", "%%")            # argparse %-formats help; a doc's % is literal
        if name == "name":
            p.add_argument(opt, default=kind, help=f"{doc} (default: {kind})")
        elif kind_ == schema.BOOL:
            p.add_argument(opt, dest=name, default=None, action=argparse.BooleanOptionalAction,
                           help=helptext(name, kind_, default, doc))
        else:
            p.add_argument(opt, dest=name, default=None, metavar=kind_.upper(),
                           help=helptext(name, kind_, default, doc))
    p.add_argument("--duration", type=_duration_arg, default=None,
                   help="stop after this long, e.g. 30s (default: until Ctrl-C)")
    p.add_argument("--json", action="store_true", help="JSON lines instead of key=value text")
    p.set_defaults(probe_kind=kind, probe_fields=[r[0] for r in rows])


def build_parser():
    p = Parser(prog="netprobe", description="Network path-quality probes and SLA breach alerts.",
               formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    p.add_argument("--version", action="version", version=f"netprobe {__version__}")
    sub = p.add_subparsers(dest="cmd", metavar="COMMAND", parser_class=Parser)

    r = sub.add_parser("run", help="run the daemon with a config file",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Run every [[probe]] in the file, each in its own process, "
                                   "until SIGTERM/SIGINT (or --duration).",
                       epilog="signals: TERM/INT stop cleanly (exit 0, final results written), a second "
                              "one exits 3;\nHUP reloads the file (an invalid file keeps the running config).")
    r.add_argument("-c", "--config", required=True, metavar="FILE", help="TOML config file")
    r.add_argument("--duration", type=_duration_arg, help="stop after this long, e.g. 30s")
    r.add_argument("--json", action="store_true", help="stdout sinks print JSON lines")
    r.add_argument("--daemon", action="store_true", help="detach into the background (needs --pidfile)")
    r.add_argument("--pidfile", metavar="FILE", help="write the daemon's pid here (with --daemon)")

    c = sub.add_parser("check-config", help="validate a config file and print the effective settings")
    c.add_argument("file", metavar="FILE")
    c.add_argument("--json", action="store_true", help="print the effective config as JSON")

    pr = sub.add_parser("probe", help="run one probe kind once (same engine as the daemon)",
                        description="Run one probe with settings from the command line. "
                                    "Every [[probe]] key is an option: --key-name VALUE.")
    kinds = pr.add_subparsers(dest="probe_kind", metavar="KIND", parser_class=Parser, required=True)
    for kind in probes.KINDS:
        _add_probe_options(kinds, kind)
    from netprobe.probes.oneway import tracecli
    tracecli.add_arguments(kinds.add_parser("trace", help="the hops of each source port's path, once (Paris-style)"))

    s = sub.add_parser("serve", help="the peer side: answer probes from other hosts")
    s.add_argument("--listen", action="append", metavar="ADDR",
                   help="address to listen on, HOST:PORT or [V6]:PORT (repeatable; default [::]:7171)")
    s.add_argument("--allow", action="append", metavar="PREFIX",
                   help="client prefix allowed (repeatable; default: loopback only)")
    s.add_argument("--key-file", metavar="FILE", help="file holding the shared key clients must prove")
    from netprobe.serve import LIMITS, ServeConfig
    for f in schema.fields(ServeConfig):
        if f.name in LIMITS:
            s.add_argument("--" + f.name.replace("_", "-"), metavar=f.metadata["kind"].upper(),
                           help=f"{f.metadata['doc']} (default {schema.default_text(f.metadata['kind'], f.default)})"
                           if not callable(f.default_factory) else f.metadata["doc"])
    s.add_argument("--duration", type=_duration_arg, help="stop after this long")

    st = sub.add_parser("selftest", help="measure this host as a measuring instrument")
    tests = st.add_subparsers(dest="selftest", metavar="TEST", parser_class=Parser, required=True)
    t = tests.add_parser("timer", help="timerfd wake-up lateness, like irtt's timer check")
    t.add_argument("--interval", type=_duration_arg, default=0.001, help="timer period (default 1ms)")
    t.add_argument("--duration", type=_duration_arg, default=5.0, help="how long (default 5s)")
    t.add_argument("--json", action="store_true")

    pc = sub.add_parser("pcap", help="retransmits per direction and flow from pcap/pcapng files",
                        description="Analyse capture files: retransmissions, out-of-order, loss before "
                                    "the capture point, per direction and peer prefix.")
    from netprobe.probes.retrans import pcapcli
    pcapcli.add_arguments(pc)

    rp = sub.add_parser("report", help="an SLA report (HTML, PDF, JSON) from jsonfile archives",
                        description="Compliance per probe and path, the breach table, data quality and "
                                    "plots for a period, from the jsonfile sink's files.")
    from netprobe.report import command as report_command
    report_command.add_arguments(rp)
    from netprobe.mesh import cli as mesh_cli
    mesh_cli.add_arguments(sub.add_parser("mesh", help="check a mesh file, print the probes and timetable it derives"))

    sub.add_parser("version", help="print the version")
    return p


def cmd_run(args):
    from netprobe import log
    from netprobe.config.load import load_file
    from netprobe.supervisor.daemon import Supervisor

    if args.pidfile and not args.daemon:
        raise UsageError("--pidfile goes with --daemon")
    if args.daemon and not args.pidfile:
        raise UsageError("--daemon needs --pidfile FILE")
    path = os.path.abspath(args.config)
    config = load_file(path)                         # errors reach the terminal before detaching
    if args.daemon:
        return _detached(args, config)
    log.setup(config.daemon.log_level)
    return Supervisor(config, duration=args.duration, stdout_json=args.json).run()


def _detached(args, config):
    import daemon
    import daemon.pidfile

    from netprobe import log
    from netprobe.supervisor.daemon import Supervisor

    pidfile = daemon.pidfile.TimeoutPIDLockFile(os.path.abspath(args.pidfile), acquire_timeout=0)
    if pidfile.is_locked():
        raise NetprobeError(f"{args.pidfile}: already locked by pid {pidfile.read_pid()}; "
                            "is netprobe running?")
    with daemon.DaemonContext(pidfile=pidfile, working_directory="/", umask=0o022, signal_map={}):
        log.setup(config.daemon.log_level, detached=True)
        return Supervisor(config, duration=args.duration, stdout_json=args.json).run()


def cmd_check_config(args):
    from netprobe.config.load import load_file
    config = load_file(args.file)
    eff = config.effective()
    if args.json:
        print(json.dumps(eff, indent=2, default=str))
    else:
        print(f"{args.file}: ok: {len(config.probes)} probe(s), {len(config.outputs)} output(s)")
        for p in config.probes:
            print(f"  probe {p.name} ({p.kind})")
        for name in config.outputs:
            print(f"  output {name}")
    return EXIT_OK


class _CliWhere(schema.Where):
    """Errors for `netprobe probe` name the option, not a TOML path."""

    def key(self, key):
        return "--" + key.replace("_", "-") if key else "command line"


def _from_cli(text, kind):
    """Command-line text as the TOML value type; unparsable text is left for validation to name."""
    if not isinstance(text, str):
        return text
    try:
        if kind == schema.INT:
            return int(text)
        if kind == schema.FLOAT:
            return float(text)
    except ValueError:
        pass
    if kind in (schema.STR_LIST, schema.PREFIX_LIST):
        return [t for t in text.split(",") if t]
    return text


def cmd_probe(args):
    if args.probe_kind == "trace":
        from netprobe.probes.oneway import tracecli
        return tracecli.run(args)
    from netprobe import log
    from netprobe.config.load import load_dict
    from netprobe.supervisor.daemon import Supervisor

    table = {"kind": args.probe_kind}
    kinds = {name: kind for name, kind, _, _ in schema.describe(probes.load(args.probe_kind).Config)}
    for name in args.probe_fields:
        value = getattr(args, name, None)
        if value is not None:
            table[name] = _from_cli(value, kinds[name])
    # validate with option names in the messages, then run through the daemon engine
    from netprobe.config.load import build_probe_config
    build_probe_config(args.probe_kind, table, _CliWhere("netprobe probe", ""))
    config = load_dict({"probe": [table], "output": {"stdout": {}},
                        "daemon": {"restart_backoff": "1s"}}, "command line")
    log.setup("warning")          # a one-shot run's output is its records
    return Supervisor(config, duration=args.duration, restart=False, stdout_json=args.json).run()


def cmd_selftest(args):
    from netprobe import selftest
    result = selftest.timer_selftest(args.interval, args.duration)
    if args.json:
        print(json.dumps(result, default=str))
    else:
        print(selftest.format_selftest(result))
    return EXIT_OK


def cmd_pcap(args):
    from netprobe.probes.retrans import pcapcli
    return pcapcli.run(args)


def cmd_report(args):
    from netprobe.report import command
    return command.run(args)


def cmd_serve(args):
    import signal
    import threading

    from netprobe import log, serve
    kinds = {f.name: f.metadata["kind"] for f in schema.fields(serve.ServeConfig)}
    table = {k: v for k, v in (("listen", args.listen), ("allow", args.allow), ("key_file", args.key_file))
             if v is not None}
    table.update({k: _from_cli(getattr(args, k), kinds[k]) for k in serve.LIMITS if getattr(args, k) is not None})
    cfg = schema.build(serve.ServeConfig, table, _CliWhere("netprobe serve", ""))
    log.setup("info")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if args.duration:
        timer = threading.Timer(args.duration, stop.set)
        timer.daemon = True             # a signal before the duration ends must not wait for it
        timer.start()
    serve.run_server(cfg, stop)
    return EXIT_OK


def cmd_mesh(args):
    from netprobe.mesh import cli as mesh_cli
    return mesh_cli.run(args)


COMMANDS = {"run": cmd_run, "check-config": cmd_check_config, "probe": cmd_probe,
            "selftest": cmd_selftest, "serve": cmd_serve, "pcap": cmd_pcap, "report": cmd_report,
            "mesh": cmd_mesh,
            "version": lambda a: print(f"netprobe {__version__}") or EXIT_OK}


def main(argv=None):
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if not args.cmd:
            parser.print_help()
            return EXIT_USAGE
        return COMMANDS[args.cmd](args)
    except NetprobeError as exc:
        print(f"netprobe: error: {redact.scrub(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return EXIT_OK


