"""`netprobe report`: archives in, an HTML report (and PDF, or JSON) out."""
import contextlib
import datetime
import json
import os
import sys

from netprobe.errors import EXIT_OK, NetprobeError, UsageError


def add_arguments(p):
    p.add_argument("paths", nargs="+", metavar="FILE_OR_DIR",
                   help="jsonfile archives: files (plain or .gz) or directories holding them")
    p.add_argument("--from", dest="start", metavar="T", help="period start: ISO 8601 UTC "
                   "(2026-11-01 or 2026-11-01T00:00:00Z) or Unix seconds (default: the archive's first record)")
    p.add_argument("--to", dest="end", metavar="T", help="period end, same forms (default: the last record)")
    p.add_argument("--probe", metavar="NAME", help="only this probe")
    p.add_argument("-o", "--output", metavar="FILE", help="HTML report to write (default report.html; "
                   "with --json only when given)")
    p.add_argument("--pdf", metavar="FILE", help="also print the report to this PDF (needs chromium)")
    p.add_argument("--json", action="store_true", help="print compliance, breaches and data quality as JSON")


def parse_time(text, option):
    """ISO 8601 (UTC unless an offset is given) or Unix seconds -> Unix seconds."""
    try:
        return float(text)
    except ValueError:
        pass
    try:
        t = datetime.datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{option} {text!r}: not a time (valid: 2026-11-01, 2026-11-01T12:00:00Z, "
                         "or Unix seconds)") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=datetime.UTC)
    return t.timestamp()


def _write_private(path, text):
    """Results go out owner-only (0600), as the sink writes them."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as exc:
        raise NetprobeError(f"cannot write {path}: {exc.strerror or exc}") from None


def run(args):
    from netprobe.report import read, render, sla
    start = parse_time(args.start, "--from") if args.start else None
    end = parse_time(args.end, "--to") if args.end else None
    if start is not None and end is not None and end <= start:
        raise UsageError("--to must be after --from")
    archive = read.read(args.paths)
    if not archive.files:
        raise NetprobeError("no archive files found: " + "; ".join(archive.quality or args.paths))
    if args.probe and args.probe not in archive.probes():
        known = ", ".join(sorted(archive.probes())) or "none"
        raise UsageError(f"--probe {args.probe!r}: no such probe in the archives (found: {known})")
    report = sla.build(archive, start, end, args.probe)
    output = args.output or (None if args.json else "report.html")
    if output or args.pdf:
        page = render.html_report(archive, report)
        html_path = output or args.pdf + ".html"
        _write_private(html_path, page)
        if args.pdf:
            try:
                render.pdf(html_path, args.pdf)
                os.chmod(args.pdf, 0o600)
            finally:
                if not output:
                    os.unlink(html_path)
        if output:
            print(f"netprobe: report written to {output}", file=sys.stderr)
    if args.json:
        print(json.dumps(sla.to_json(report), indent=1))
    return EXIT_OK
