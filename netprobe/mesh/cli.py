"""`netprobe mesh check FILE` and `netprobe mesh plan FILE [--self NAME] [--cycles N] [--json]`."""
import argparse
import datetime
import json
import time

from netprobe.errors import EXIT_OK, UsageError
from netprobe.mesh import model, plan
from netprobe.results import iso_time
from netprobe.units import format_duration


def add_arguments(p):
    from netprobe.cli import Parser
    sub = p.add_subparsers(dest="mesh_cmd", metavar="ACTION", parser_class=Parser, required=True)
    c = sub.add_parser("check", help="validate a mesh file and its timetable (exit 2 with one line per error)")
    c.add_argument("file", metavar="FILE")
    pl = sub.add_parser("plan", help="print the derived probes and the exclusive-test timetable",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="--json prints one JSON object per scheduled test: kind, test, a, b, start, end, "
                               "slot_end (UTC ISO-8601) and the resources it holds.")
    pl.add_argument("file", metavar="FILE")
    pl.add_argument("--self", dest="self_name", metavar="NAME", help="only this host's probes and tests")
    pl.add_argument("--cycles", type=_positive, default=1, metavar="N",
                    help="how many cycles (the longest `every`) to print (default 1)")
    pl.add_argument("--start", type=_time, default=None, metavar="TIME",
                    help="from the slot holding this time, ISO-8601 UTC or Unix seconds (default: now)")
    pl.add_argument("--json", action="store_true", help="JSON lines, one per scheduled test")


def _positive(text):
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= 10_000:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number from 1 to 10000")
    return n


def _time(text):
    try:
        return float(text)
    except ValueError:
        pass
    try:
        t = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not ISO-8601 (2026-12-06T12:00:00Z) "
                                         "or Unix seconds") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=datetime.UTC)
    return t.timestamp()


def run(args):
    mesh = model.load_file(args.file)
    tt = plan.timetable(mesh)               # a schedule that does not fit is a check failure
    if args.mesh_cmd == "check":
        excl = sum(len(t.pairs) for t in mesh.tests if t.exclusive)
        print(f"{args.file}: ok: version {mesh.version}, {len(mesh.hosts)} host(s), {len(mesh.tests)} test(s), "
              f"{excl} exclusive pair(s) in slots of {format_duration(tt.slot)}")
        return EXIT_OK
    if args.self_name is not None and args.self_name not in mesh.by_name:
        raise UsageError(f"--self {args.self_name!r} is not a [[host]] name in {args.file}")
    now = time.time() if args.start is None else args.start
    first = (now // tt.slot) * tt.slot
    runs = tt.runs(first, first + args.cycles * tt.cycle * tt.slot, host=args.self_name)
    if args.json:
        for r in runs:
            print(json.dumps(r.to_json()))
        return EXIT_OK
    print(f"mesh {args.file} version {mesh.version}: slot {format_duration(tt.slot)} (guard "
          f"{format_duration(tt.guard)}), cycle {tt.cycle} slots = {tt.cycle * tt.slot:.0f}s")
    hosts = [args.self_name] if args.self_name else [h.name for h in mesh.hosts]
    for host in hosts:
        derived = plan.probes(mesh, host)
        worker = {p.name: w for w, members in plan.shared_workers(mesh, derived).items() for p in members}
        print(f"host {host}: {len(derived)} probe(s)")
        for p in derived:
            print(f"  {p.kind:10} {p.name:24} peer={p.peer} ({p.table['peer']})"
                  f"{' timetabled' if p.exclusive else ''}{f' in worker {worker[p.name]}' if p.name in worker else ''}")
    print(f"timetable from {iso_time(first)}: {len(runs)} test(s)")
    for r in runs:
        s = r.slotted
        print(f"  {iso_time(r.start)} .. {iso_time(r.end)}  {s.kind:10} {s.a} -> {s.b}  "
              f"holds {','.join(s.resources)}")
    return EXIT_OK
