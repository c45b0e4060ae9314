"""`loco`: loco 0.4's command line over netprobe's capacity probe.

Online (`loco -h HOST`): measures the path from a `netprobe serve` peer at
HOST (port 7171, netprobe's, not locod's 32001) to this host and prints one
comma-separated line in loco's format; the raw values go to the CSV dump
(`-w`, default /tmp/loco.csv) in loco's layout, so `loco -r` re-analyses
them. Offline (`loco -r FILE`): analyses a loco CSV dump (ours or loco's).

Differences from loco 0.4, all deliberate: the values are right (L - 1
packet-times per train, each packet's own size plus IP/UDP and Ethernet
headers, kernel RX timestamps), `-b` works offline (loco ignored it),
`--port` means the port (loco parsed it as a format), a refused estimate
(no complete train, interrupt coalescing) prints -1 with assessment 0
UNKNOWN rather than loco's invented 1000 Mbps, and `%ul` (loco's user-space
receive latency) is 0 because the timestamps are the kernel's. `-I` is not
offered: the route picks the source address. `-q` is netprobe's quick mode
(stop once stable) and its assessment is that of the estimate.
SIGUSR1 prints `progress%,STATE,estimate` to stderr; SIGINT/TERM end with exit 1.
"""
import argparse
import math
import re
import signal
import sys
import threading

import numpy as np

from netprobe import __version__
from netprobe.config.schema import Where, build
from netprobe.errors import EXIT_RUNTIME, NetprobeError, UsageError
from netprobe.fileio import open_private
from netprobe.probes.capacity import analysis
from netprobe.probes.capacity.config import Config
from netprobe.probes.capacity.runner import Run, Session

DEFAULT_FORMAT = "%be%am%AM%bl%bu%bw%pd%ul"
TOKENS = ("be", "am", "AM", "bl", "bu", "bw", "pd", "ul", "pm", "ps", "lt")
ASSESSMENTS = {0: "UNKNOWN", 1: "MODE", 2: "NO MODE", 3: "LBOUND", 4: "QUICK"}
CSV_MAX_ROWS = 1_000_000


def parse_format(fmt):
    """loco's format: a concatenation of 3-character tokens %xx; UsageError on anything else."""
    if not fmt or len(fmt) % 3:
        raise UsageError(f'format "{fmt}": expected tokens like %be%bl%bu (valid: {" ".join("%" + t for t in TOKENS)})')
    out = []
    for i in range(0, len(fmt), 3):
        tok = fmt[i:i + 3]
        if tok[0] != "%" or tok[1:] not in TOKENS:
            raise UsageError(f'format "{fmt}": "{tok}" at offset {i} is not a token '
                             f'(valid: {" ".join("%" + t for t in TOKENS)})')
        out.append(tok[1:])
    return out


def assessment(est):
    if est.method == "mode":
        return 1
    if est.method in ("adr", "max-size"):
        return 2
    return 0


def values(est, meas, rtt_s=math.nan):
    """Token -> value of an estimate (Mbps, us)."""
    ok = est.method != "refused"
    pre = meas.of(analysis.PRELIM)
    # loco's preliminary mean is the interquartile mean (its version summed the unsorted input)
    # and its spread the population standard deviation
    pm, ps = (analysis.iqm(pre), float(np.std(pre))) if len(pre) else (math.nan, math.nan)
    disp = meas.disp_ns[np.isfinite(meas.rate)]
    code = assessment(est)
    return {"be": est.capacity / 1e6 if ok else -1.0, "am": code, "AM": ASSESSMENTS[code],
            "bl": est.range_lo / 1e6 if ok else -1.0, "bu": est.range_hi / 1e6 if ok else -1.0,
            "bw": est.bin_width / 1e6 if math.isfinite(est.bin_width) else -1.0,
            "pd": float(disp.min()) / 1e3 if disp.size else -1.0, "ul": 0.0,
            "pm": pm / 1e6, "ps": ps / 1e6, "lt": rtt_s * 1e6}


def render(tokens, vals):
    out = []
    for t in tokens:
        v = vals[t]
        out.append(str(v) if isinstance(v, (int, str)) else ("nan" if not math.isfinite(v) else f"{v:.4f}"))
    return ",".join(out)


# -- loco's CSV dump -----------------------------------------------------------------------------

def write_csv(path, meas):
    """loco's layout: the count of P1 values, then `bw,delta` lines (Mbps, us); the same for P2."""
    lines = []
    for phase in (analysis.PHASE1, analysis.PHASE2):
        ok = (meas.phase == phase) & np.isfinite(meas.rate)
        lines.append(str(int(ok.sum())))
        # full precision (loco wrote %.4f); without preliminary trains, -r comes close to the
        # online line but not exactly (netprobe's `record` file re-analyses exactly)
        lines += [f"{r / 1e6!r},{d / 1e3:.4f}" for r, d in zip(meas.rate[ok].tolist(), meas.disp_ns[ok], strict=True)]
    with open_private(path) as fh:
        fh.write("\n".join(lines) + "\n")


def read_csv(path):
    """((P1 bit/s, P1 dispersion ns), (P2 ...)) arrays of a loco CSV dump (Mbps and us in the
    file); UsageError naming the line if malformed."""
    try:
        with open(path) as fh:
            text = fh.read(64 << 20)
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    lines = text.splitlines()
    pos = 0
    out = []
    for name in ("P1", "P2"):
        if pos >= len(lines):
            raise UsageError(f"{path}: line {pos + 1}: missing the {name} count")
        count = lines[pos].strip()
        if not re.fullmatch(r"[0-9]{1,7}", count) or int(count) > CSV_MAX_ROWS:
            raise UsageError(f"{path}: line {pos + 1}: {name} count must be a number up to {CSV_MAX_ROWS}")
        n = int(count)
        pos += 1
        vals, disp = [], []
        for i in range(pos, pos + n):
            if i >= len(lines):
                raise UsageError(f"{path}: line {i + 1}: {name} has {n} values but the file ends")
            parts = lines[i].split(",")
            try:
                bw = float(parts[0])
                if len(parts) != 2:
                    raise ValueError
                delta = float(parts[1])
            except ValueError:
                raise UsageError(f"{path}: line {i + 1}: expected bw,delta numbers") from None
            if not (math.isfinite(bw) and bw > 0 and math.isfinite(delta) and 0 <= delta < 1e12):
                raise UsageError(f"{path}: line {i + 1}: bandwidth must be a positive number and delta "
                                 "a non-negative one")
            vals.append(bw * 1e6)
            disp.append(round(delta * 1e3))
        pos += n
        out.append((np.asarray(vals, dtype=np.float64), np.asarray(disp, dtype=np.int64)))
    return out[0], out[1]


def offline(p1, p2):
    """Measurements of CSV values ((bit/s, ns) pairs): Phase I (also the preliminary values, as in
    loco's P1 array) and Phase II; no timestamps, so no coalescing, burst or CapProbe checks.
    Each pair's size is recovered as rate x dispersion (the wire bytes after its first packet),
    so the check that pairs of every size agree runs offline as it did online."""
    (r1, d1), (r2, d2) = p1, p2
    n1, n2 = len(r1), len(r2)
    phase = np.concatenate([np.full(n1, analysis.PRELIM), np.full(n1, analysis.PHASE1),
                            np.full(n2, analysis.PHASE2)]).astype(np.int64)
    rate = np.concatenate([r1, r1, r2])
    disp = np.concatenate([d1, d1, d2])
    n = len(rate)
    return analysis.Measurements(train=np.arange(n, dtype=np.int64), phase=phase, n=np.full(n, 2, dtype=np.int64),
                                 size=np.rint(rate * disp / 8e9).astype(np.int64), disp_ns=disp,
                                 rate=rate, delay_sum=np.full(n, math.nan), send_rate=np.full(n, math.inf))


# -- the command -------------------------------------------------------------------------------

class Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(f"loco: {message} (see -?)")


def build_parser():
    p = Parser(prog="loco", add_help=False, description="Capacity of the path from a netprobe peer (loco 0.4's "
                                                        "command line; see netprobe probe capacity).")
    p.add_argument("-?", "--help", action="help", help="this help")
    p.add_argument("-V", "--version", action="store_true", help="print the version")
    p.add_argument("-h", "--host", help="online: the `netprobe serve` peer that sends")
    p.add_argument("-p", "--port", type=int, default=7171, help="its TCP port (default 7171)")
    p.add_argument("-q", "--quick", action="store_true", help="quick mode: stop once the estimate is stable")
    p.add_argument("-w", dest="write", default="/tmp/loco.csv", help="online: CSV dump (default /tmp/loco.csv)")
    p.add_argument("-r", dest="read", help="offline: analyse this CSV dump")
    p.add_argument("-b", dest="bin", type=float, help="offline: histogram bin width, Mbps")
    p.add_argument("-f", "--format", default=DEFAULT_FORMAT,
                   help=f"result line tokens (default {DEFAULT_FORMAT.replace('%', '%%')})")
    p.add_argument("-k", "--key-file", help="shared key file, if the peer asks for one")
    return p


def main(argv=None):
    try:
        return _main(sys.argv[1:] if argv is None else argv)
    except NetprobeError as exc:
        print(f"loco: error: {exc}", file=sys.stderr)
        return exc.exit_code


def _main(argv):
    args = build_parser().parse_args(argv)
    if args.version:
        print(f"Loco v0.4.0 compatible (netprobe {__version__})", file=sys.stderr)
        return 0
    tokens = parse_format(args.format)
    if args.host and (args.read or args.bin is not None):
        raise UsageError("loco: -h (online) cannot be mixed with -r/-b (offline)")
    if args.read:
        if args.bin is not None and not (math.isfinite(args.bin) and args.bin > 0):
            raise UsageError("loco: -b must be a positive bin width in Mbps")
        p1, p2 = read_csv(args.read)
        meas = offline(p1, p2)
        est = analysis.estimate(meas, int(meas.size[meas.phase == analysis.PHASE1].max(initial=0)),
                                bin_width_bps=args.bin * 1e6 if args.bin else None)
        print(render(tokens, values(est, meas)))
        return 0
    if not args.host:
        raise UsageError("OOPS: How about some options?! (-h HOST or -r FILE)")
    return _online(args, tokens)


def _online(args, tokens):
    key = ""
    if args.key_file:
        try:
            with open(args.key_file) as fh:
                key = fh.read().strip()
        except OSError as exc:
            raise UsageError(f"key file {args.key_file}: {exc.strerror}") from None
    host = f"[{args.host}]" if ":" in args.host else args.host
    cfg = build(Config, {"name": "loco", "peer": f"{host}:{args.port}", "key": key,
                         "mode": "quick" if args.quick else "full"}, Where("loco", ""))
    stop = threading.Event()
    holder = {}

    def progress(*_):
        run = holder.get("run")
        state, pct, est = ("INIT", 0.0, None) if run is None else (run.state, run.progress * 100, run.last)
        be = est.capacity / 1e6 if est is not None and math.isfinite(est.capacity) else -1.0
        print(f"{pct:.0f}%,{state},{be:.4f}", file=sys.stderr, flush=True)

    def interrupted(*_):
        stop.set()
        holder["interrupted"] = True

    signal.signal(signal.SIGUSR1, progress)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGPIPE):
        signal.signal(sig, interrupted)
    session = Session(cfg)
    try:
        run = holder["run"] = Run(session, cfg, stop)
        est = run.execute()
        meas = run.measurements()
    finally:
        session.close()
    write_csv(args.write, meas)
    if holder.get("interrupted"):
        return EXIT_RUNTIME
    print(render(tokens, values(est, meas, session.rtt)))
    return 0 if est.method != "refused" else EXIT_RUNTIME


if __name__ == "__main__":
    sys.exit(main())

