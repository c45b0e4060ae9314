"""`make bench`: run every benchmark, print a table, write bench/results/<name>.json."""
import argparse
import importlib
import json
import pathlib
import platform
import time

BENCHES = ["timer", "throughput", "retrans", "oneway", "capacity", "flows", "metrics", "peer", "report", "mesh"]
RESULTS = pathlib.Path(__file__).parent / "results"


def main():
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("names", nargs="*", default=BENCHES, help=f"which (default all: {', '.join(BENCHES)})")
    ap.add_argument("--quick", action="store_true", help="shorter runs, noisier figures")
    args = ap.parse_args()
    RESULTS.mkdir(exist_ok=True)
    failures = []
    for name in args.names:
        mod = importlib.import_module(f"bench.{name}")
        t0 = time.time()
        rows = mod.run(quick=args.quick)
        out = {"bench": name, "host": platform.node(), "kernel": platform.release(),
               "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0)), "rows": rows}
        path = RESULTS / f"{name}.json"
        path.write_text(json.dumps(out, indent=2))
        print(f"\n== {name} ({time.time() - t0:.0f} s; {path})")
        print(mod.table(rows))
        why = getattr(mod, "failed", lambda rows: None)(rows)     # a bench with limits says when they are missed
        if why:
            failures.append(f"{name}: {why}")
    if failures:
        raise SystemExit("bench over its limits:\n" + "\n".join(failures))


if __name__ == "__main__":
    main()
