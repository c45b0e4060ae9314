"""`python -m netprobe.probes.capacity FILE...`: re-analyse recorded capacity runs (.npz from `record`).

Prints one RESULT line per file, computed exactly as the live estimate was.
"""
import sys

from netprobe.errors import EXIT_USAGE, NetprobeError
from netprobe.probes.capacity.runner import reanalyze, result_fields
from netprobe.results import RESULT, Record


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        return 0 if argv else EXIT_USAGE
    json_out = "--json" in argv
    for path in (a for a in argv if a != "--json"):
        try:
            est = reanalyze(path)
        except NetprobeError as exc:
            print(f"netprobe: error: {exc}", file=sys.stderr)
            return exc.exit_code
        rec = Record(RESULT, "capacity", path, result_fields(est, mode="offline"))
        print(rec.to_json() if json_out else rec.to_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
