"""`netprobe pcap`, the `netprobe-pcap` post-rotate entry point and --watch, on generated captures.

Oracle: the capture's script (how many segments were resent, in which direction).
"""
import json
import subprocess
import sys
import threading
import time
import types

from netprobe import cli
from netprobe.probes.retrans import pcapcli
from tests.reference import retrans_gen as gen

# 200 segments A -> B, 10 of them lost before the capture point and resent: 10 / 210 = 4.76 %
SCRIPT = ([("send", 0)] * 19 + [("lose", 0), ("send", 0), ("ack", 0), ("dupack", 0), ("dupack", 0)]) * 10


def write(path, script=SCRIPT):
    frames = gen.conversation(script)
    data = gen.ether_pcap(frames)
    path.write_bytes(data)
    return data


def lost_and_resent(script):
    """Script with a resend of each lost segment after its dup ACKs."""
    out, lost = [], 0
    for op in script:
        out.append(op)
        if op[0] == "lose":
            lost += 1
        if op[0] == "dupack" and out[-2][0] == "dupack":
            out.append(("retrans", 21 * lost - 2))       # index of the lost one in the sent list
    return out


def test_json_lines_and_breach(tmp_path, capsys):
    write(tmp_path / "a.pcap", lost_and_resent(SCRIPT))
    rc = cli.main(["pcap", str(tmp_path / "a.pcap"), "--json", "--max-retrans-pct", "4"])
    assert rc == 0
    recs = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    up = [r for r in recs if r["type"] == "RESULT" and r["dir"] == f"{gen.A4}->{gen.B4}"][0]
    assert (up["data_pkts"], up["retrans"], up["lost_before_capture"]) == (210, 10, 10)
    br = [r for r in recs if r["type"] == "BREACH"]
    assert len(br) == 1 and br[0]["dir"] == f"{gen.A4}->{gen.B4}" and br[0]["flows"].endswith("(10)")


def test_truncated_and_bad_files(tmp_path, capsys):
    data = write(tmp_path / "a.pcap")
    (tmp_path / "cut.pcap").write_bytes(data[:-7])
    (tmp_path / "bad.pcap").write_bytes(b"hello world, not a capture")
    rc = cli.main(["pcap", str(tmp_path / "cut.pcap"), str(tmp_path / "bad.pcap")])
    out, err = capsys.readouterr()
    assert rc == 1
    assert "ERROR probe=retrans name=pcap source=cut.pcap error=\"truncated record at offset" in out
    assert err.strip().splitlines() == [f"netprobe: error: {tmp_path}/bad.pcap: not a pcap or pcapng file "
                                        "(magic 0x6c6c6568)"]


def pcap_stdin(pieces, *args):
    """`netprobe pcap - --json` fed `pieces` through a pipe one write at a time: (rc, records, stderr)."""
    p = subprocess.Popen([sys.executable, "-m", "netprobe", "pcap", "-", "--json", *args], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for piece in pieces:
        p.stdin.write(piece)
        p.stdin.flush()
        time.sleep(0.002)
    out, err = p.communicate(timeout=60)
    return p.returncode, [json.loads(line) for line in out.decode().splitlines()], err.decode()


def test_a_stream_on_stdin_gives_what_the_file_gives(tmp_path, capsys):
    data = write(tmp_path / "a.pcap", lost_and_resent(SCRIPT))
    assert cli.main(["pcap", str(tmp_path / "a.pcap"), "--json"]) == 0
    want = [{**json.loads(line), "source": "-"} for line in capsys.readouterr().out.splitlines()]
    for size in (1, 37, 1000):                # records and the file header cut between writes
        rc, got, err = pcap_stdin([data[i:i + size] for i in range(0, len(data), size)] if size > 1
                                  else [data[:10], data[10:]])
        assert (rc, err) == (0, "") and [r for r in got if r["type"] == "RESULT"] == want
    off = 24
    while off < len(data):
        last = 16 + int.from_bytes(data[off + 8:off + 12], "little")
        off += last
    rc, got, _ = pcap_stdin([data[:-7]])
    assert rc == 0 and [r["error"] for r in got if r["type"] == "ERROR"] == [
        f"the stream ended inside a record ({last - 7} bytes left)"]
    # the cut record is the script's last, the tenth resend: the other nine are reported
    assert [r["retrans"] for r in got if r["type"] == "RESULT" and r["dir"] == f"{gen.A4}->{gen.B4}"] == [9]
    rc, got, err = pcap_stdin([b"hello world, not a capture"])
    assert (rc, got) == (1, []) and err.strip() == "netprobe: error: -: not a pcap or pcapng file (magic 0x6c6c6568)"


def test_post_rotate_entry_point_with_env_options(tmp_path, capsys, monkeypatch):
    write(tmp_path / "dump0.pcap", lost_and_resent(SCRIPT))
    monkeypatch.setenv("NETPROBE_PCAP_ARGS", "--ndjson --max-retrans-pct 1")
    assert pcapcli.post_rotate_main([str(tmp_path / "dump0.pcap")]) == 0
    lines = capsys.readouterr().out.splitlines()
    docs = [json.loads(x) for x in lines[1::2]]
    assert all("index" in json.loads(x) for x in lines[::2])
    assert [d["type"] for d in docs].count("BREACH") == 1
    assert pcapcli.post_rotate_main([]) == 2
    assert pcapcli.post_rotate_main([str(tmp_path / "dump0.pcap"), "--reorder-window", "soon"]) == 2
    assert pcapcli.post_rotate_main([str(tmp_path / "dump0.pcap"), "--max-flows", "0"]) == 2
    assert "--max-flows 0 is out of range" in capsys.readouterr().err


def test_watch_analyses_each_finished_file_once(tmp_path):
    args = types.SimpleNamespace(json=True, ndjson=False, max_retrans_pct=None, min_packets=100, prefix_v4=32,
                                 prefix_v6=128, name="w", poll=0.05, max_flows=100, reorder_window=0.0)
    out = []
    sink = types.SimpleNamespace(write=out.append, flush=lambda: None)
    stop = threading.Event()
    t = threading.Thread(target=pcapcli.watch, args=(str(tmp_path), args, stop, sink))
    write(tmp_path / "d1.pcap")
    t.start()
    try:
        time.sleep(0.3)
        write(tmp_path / "d2.pcap", lost_and_resent(SCRIPT))
        (tmp_path / "notes.txt").write_text("ignored")
        time.sleep(0.4)
    finally:
        stop.set()
        t.join(5)
    recs = [json.loads(x) for x in "".join(out).splitlines()]
    sources = [r["source"] for r in recs if r["dir"] == f"{gen.A4}->{gen.B4}"]
    assert sources == ["d1.pcap", "d2.pcap"]
    assert [r["retrans"] for r in recs if r["dir"] == f"{gen.A4}->{gen.B4}"] == [0, 10]


def test_elasticsearch_bulk_sink(tmp_path, capsys):
    """--es-url posts one _bulk request per file to a real local HTTP server."""
    import http.server

    got = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            got.append((self.path, self.headers["Content-Type"],
                        self.rfile.read(int(self.headers["Content-Length"])).decode()))
            body = b'{"took":1,"errors":false,"items":[]}' if self.path == "/_bulk" else b"nope"
            self.send_response(200 if self.path == "/_bulk" else 404)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a):
            pass

    srv = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever)
    t.start()
    try:
        write(tmp_path / "a.pcap", lost_and_resent(SCRIPT))
        base = f"http://127.0.0.1:{srv.server_port}"
        assert cli.main(["pcap", str(tmp_path / "a.pcap"), "--es-url", f"{base}/_bulk",
                         "--max-retrans-pct", "1"]) == 0
        assert len(got) == 1 and got[0][:2] == ("/_bulk", "application/x-ndjson")
        lines = got[0][2].splitlines()
        assert [json.loads(x)["type"] for x in lines[1::2]].count("BREACH") == 1
        assert "BREACH" in capsys.readouterr().out         # printed as well
        assert cli.main(["pcap", str(tmp_path / "a.pcap"), "--es-url", f"{base}/other"]) == 1
        assert capsys.readouterr().err.strip().endswith("/other: HTTP 404 Not Found")
    finally:
        srv.shutdown()
        t.join()
        srv.server_close()
    assert cli.main(["pcap", str(tmp_path / "a.pcap"), "--es-url", "ftp://x"]) == 2
