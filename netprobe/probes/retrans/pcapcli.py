"""`netprobe pcap FILE...`, the tcpdump post-rotate hook and the directory-watch mode.

    netprobe pcap f1.pcap f2.pcapng [--json | --ndjson] [--max-retrans-pct 1]
    ssh probe1 tcpdump -i eth0 -s 128 -w - tcp | netprobe pcap -     (analysed when the stream ends)
    tcpdump -i any -s 128 -G 60 -w /var/tmp/dump-%s.pcap -z netprobe-pcap 'tcp'
    netprobe pcap --watch /var/tmp/dumps --max-retrans-pct 1 --es-url http://es:9200/_bulk

Each file is analysed on its own (as pcapgazer did); its RESULT lines give
per direction and per peer prefix the retransmit rate, and a BREACH line
names a direction above --max-retrans-pct and its worst flows. A file that
ends in a bad record is analysed up to it and an ERROR line says where.
"""
import argparse
import os
import signal
import stat
import sys
import threading

from netprobe.errors import EXIT_OK, EXIT_RUNTIME, EXIT_USAGE, NetprobeError, UsageError
from netprobe.outputs import elasticsearch
from netprobe.probes.retrans import analysis, pcapfile
from netprobe.results import ERROR, Record
from netprobe.units import parse_duration

SUFFIXES = (".pcap", ".pcapng", ".cap")
ES_INDEX = "netprobe-retrans"          # documents go to netprobe-retrans-YYYY.MM.DD


def add_arguments(p):
    p.add_argument("files", nargs="*", metavar="FILE",
                   help="pcap or pcapng files, each analysed on its own; - reads a capture stream from stdin "
                        "to its end (tcpdump -w - | netprobe pcap -)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="JSON lines instead of key=value text")
    out.add_argument("--ndjson", action="store_true",
                     help="Elasticsearch _bulk NDJSON (action line + document per record)")
    p.add_argument("--es-url", metavar="URL",
                   help="also POST each file's records to this Elasticsearch _bulk endpoint "
                        "(e.g. http://es:9200/_bulk; one request per file)")
    p.add_argument("--max-retrans-pct", type=float, default=None, metavar="PCT",
                   help="BREACH for a direction whose retransmitted share of data packets exceeds this")
    p.add_argument("--min-packets", type=int, default=100, metavar="N",
                   help="data packets a direction needs before it can breach (default 100)")
    p.add_argument("--prefix-v4", type=int, default=32, metavar="LEN", help="group IPv4 peers by this prefix")
    p.add_argument("--prefix-v6", type=int, default=128, metavar="LEN", help="group IPv6 peers by this prefix")
    p.add_argument("--reorder-window", type=_duration, default=0.0, metavar="DURATION",
                   help="when neither IP IDs nor TCP timestamps order the sends: a segment filling a "
                        "hole this soon after it opened is out-of-order, later a retransmission "
                        "(default: the flow's handshake RTT, or 3ms)")
    p.add_argument("--max-flows", type=int, default=262144, metavar="N",
                   help="flows analysed per file, about 2.7 KB each as they appear (the table doubles as it "
                        "fills); packets of further flows are counted, not analysed (default 262144)")
    p.add_argument("--name", default="pcap", help="name= on every line (default pcap)")
    p.add_argument("--watch", metavar="DIR", help="analyse each new capture file appearing in DIR, until signalled")
    p.add_argument("--poll", type=float, default=1.0, metavar="S", help="--watch: seconds between scans")


def _duration(text):
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _check(args):
    if not 0 <= args.prefix_v4 <= 32 or not 0 <= args.prefix_v6 <= 128:
        raise UsageError("--prefix-v4 must be 0..32 and --prefix-v6 0..128")
    if args.max_retrans_pct is not None and not 0 <= args.max_retrans_pct <= 100:
        raise UsageError(f"--max-retrans-pct {args.max_retrans_pct} is not a percentage (0..100)")
    if not 1 <= args.max_flows <= 1 << 26:
        raise UsageError(f"--max-flows {args.max_flows} is out of range (1 .. {1 << 26})")
    if args.es_url and not args.es_url.startswith(("http://", "https://")):
        raise UsageError(f"--es-url {args.es_url}: not an http:// or https:// URL")
    if args.poll <= 0:
        raise UsageError("--poll must be > 0")
    if not args.files and not args.watch:
        raise UsageError("give capture files, or --watch DIR")


def file_records(path, args, follow=True):
    """Records for one file ("-": the stream on stdin): RESULT per direction group, BREACHes,
    ERROR if it ended badly. follow=False: a symlink is refused (PcapError)."""
    kw = {"max_flows": args.max_flows, "reorder_ns": round(args.reorder_window * 1e9)}
    if path == "-":
        res = pcapfile.analyse_stream(sys.stdin.buffer, **kw)
    else:
        res = pcapfile.analyse_file(path, follow=follow, **kw)
    groups = analysis.group_directions(res.flows, args.prefix_v4, args.prefix_v6)
    recs = analysis.records(groups, name=args.name, source=os.path.basename(path),
                            max_retrans_pct=args.max_retrans_pct, min_data_pkts=args.min_packets)
    c = res.counters
    bad = {k: c[k] for k in ("truncated", "malformed", "bad_linktype", "fragments", "flows_dropped") if c[k]}
    if res.error or bad:
        recs.append(Record(ERROR, analysis.KIND, args.name,
                           {"source": os.path.basename(path), "error": res.error or "frames skipped",
                            "frames": c["frames"], **bad}))
    return recs


def emit(recs, args, out=None):
    """Print the records, then (with --es-url) post them; a failed post raises NetprobeError."""
    out = out or sys.stdout
    if args.ndjson:
        out.write(elasticsearch.bulk_body(recs, ES_INDEX))
    else:
        for r in recs:
            out.write((r.to_json() if args.json else r.to_text()) + "\n")
    out.flush()
    if getattr(args, "es_url", None) and recs:
        elasticsearch.post_bulk(args.es_url, recs, ES_INDEX)


def run(args):
    _check(args)
    status = EXIT_OK
    for path in args.files:
        try:
            emit(file_records(path, args), args)
        except NetprobeError as exc:
            print(f"netprobe: error: {exc}", file=sys.stderr)
            status = EXIT_RUNTIME
    if args.watch:
        stop = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        watch(args.watch, args, stop)
    return status


def watch(directory, args, stop, out=None):
    """Analyse each capture file in `directory` once its size has stopped changing
    for one poll (tcpdump has rotated away from it). Files present at start are
    analysed too; a file is never analysed twice. Only regular files are read: a
    symlink, FIFO or other special file under a capture name gets one line on
    stderr and is passed over (the directory may be writable by others)."""
    if not os.path.isdir(directory):
        raise NetprobeError(f"{directory}: not a directory")
    done, sizes = set(), {}
    while not stop.is_set():
        try:
            names = sorted(n for n in os.listdir(directory) if n.endswith(SUFFIXES) and n not in done)
        except OSError as exc:
            raise NetprobeError(f"{directory}: {exc.strerror}") from None
        for n in names:
            path = os.path.join(directory, n)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(st.st_mode):
                done.add(n)
                sizes.pop(n, None)
                kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else \
                    "a FIFO" if stat.S_ISFIFO(st.st_mode) else "not a regular file"
                print(f"netprobe: error: {path}: {kind}, skipped (--watch reads regular files only)",
                      file=sys.stderr, flush=True)
                continue
            size = st.st_size
            if sizes.get(n) == size and size > 0:
                done.add(n)
                sizes.pop(n)
                try:
                    emit(file_records(path, args, follow=False), args, out)
                except NetprobeError as exc:
                    print(f"netprobe: error: {exc}", file=sys.stderr, flush=True)
            else:
                sizes[n] = size
        stop.wait(args.poll)


def post_rotate_main(argv=None):
    """Console entry `netprobe-pcap FILE` for `tcpdump -z`: one file, lines on stdout.
    NETPROBE_PCAP_ARGS adds options (e.g. "--ndjson --max-retrans-pct 1")."""
    p = argparse.ArgumentParser(prog="netprobe-pcap", description=__doc__.split("\n")[0])
    add_arguments(p)
    argv = list(sys.argv[1:] if argv is None else argv) + os.environ.get("NETPROBE_PCAP_ARGS", "").split()
    try:
        args = p.parse_args(argv)
    except SystemExit as exc:
        return EXIT_USAGE if exc.code else EXIT_OK
    try:
        return run(args)
    except NetprobeError as exc:
        print(f"netprobe-pcap: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        return EXIT_OK


if __name__ == "__main__":
    sys.exit(post_rotate_main())
