"""`make bench`: run every benchmark, print a table, write bench/results/<name>.json.

With --check, each figure is then held to its target (bench/targets.py: most are ratios to the
peer tool's figure from the same run) and the run exits 1 naming every figure that missed its
target or could not be measured."""
import argparse
import importlib
import json
import os
import pathlib
import platform
import sys
import time

from bench import targets

BENCHES = ["timer", "throughput", "retrans", "oneway", "capacity", "flows", "metrics", "peer", "report", "mesh",
           "mesh_oneway"]
RESULTS = pathlib.Path(__file__).parent / "results"


def _save(path, out):
    """Results are written 0600, like every result file of the project."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(out, fh, indent=2)


def _run(name, args):
    """Run one bench, print its table, save its rows; returns the rows, or the reason there are none."""
    mod = importlib.import_module(f"bench.{name}")
    t0 = time.time()
    try:
        rows = mod.run(quick=args.quick)
    except (Exception, SystemExit) as exc:      # a bench that cannot run (no root, no peer tool) stops the plain run
        if not args.check:
            raise
        print(f"\n== {name}: did not run: {exc}")
        return f"did not run: {exc}"
    out = {"bench": name, "host": platform.node(), "kernel": platform.release(),
           "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0)), "quick": args.quick, "rows": rows}
    path = args.results / f"{name}.json"
    _save(path, out)
    print(f"\n== {name} ({time.time() - t0:.0f} s; {path})")
    print(mod.table(rows))
    return rows


def _saved(name, args):
    path = args.results / f"{name}.json"
    try:
        return json.loads(path.read_text())["rows"]
    except (OSError, ValueError, KeyError) as exc:
        return f"no saved rows in {path}: {exc}"


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("names", nargs="*", default=BENCHES, help=f"which (default all: {', '.join(BENCHES)})")
    ap.add_argument("--quick", action="store_true", help="shorter runs, noisier figures")
    ap.add_argument("--check", action="store_true",
                    help="hold each figure to its target (bench/targets.py); exit 1 naming each one missed")
    ap.add_argument("--saved", action="store_true",
                    help="with --check: check the rows last saved in the results directory, run nothing")
    ap.add_argument("--results", type=pathlib.Path, default=RESULTS, help=f"results directory (default {RESULTS})")
    args = ap.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHES]
    if unknown:
        ap.error(f"unknown bench {', '.join(unknown)} (known: {', '.join(BENCHES)})")
    if args.saved and not args.check:
        ap.error("--saved only goes with --check")
    args.results.mkdir(exist_ok=True)
    verdicts = []
    for name in args.names:
        rows = _saved(name, args) if args.saved else _run(name, args)
        if args.check:
            mine = targets.check(name, rows)
            print(f"\n== {name}: targets\n{targets.table(mine)}")
            verdicts += mine
    if not args.check:
        return 0
    failed = [v.target.figure for v in verdicts if not v.ok]
    if failed:
        print(f"\nbench check FAILED ({len(failed)} of {len(verdicts)} figures): " + "; ".join(failed))
        return 1
    print(f"\nbench check passed: {len(verdicts)} figures within their targets")
    return 0


if __name__ == "__main__":
    sys.exit(main())
