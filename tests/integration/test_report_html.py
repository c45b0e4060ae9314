"""`netprobe report` end to end on archives the real jsonfile sink wrote, damaged the ways
archives get damaged; the HTML opened in real headless Chromium (Debian's chromium), the
PDF rendered by pdftoppm (poppler-utils)."""
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from netprobe.outputs.jsonfile import JsonFileConfig, JsonFileSink
from netprobe.report import read
from netprobe.results import RESULT, Record, event, iso_time, percent, rate, seconds

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
T0 = 1_795_000_000.0
IV = 10.0
PORTS = (41000, 41001, 41002, 41003)
PROBES = [{"kind": "throughput", "name": "dc1-dc2", "interval": IV, "rate": 200e6, "min_ratio": 0.95},
          {"kind": "oneway", "name": "dc1-dc2-owd", "interval": IV, "max_loss_pct": 1.0, "max_delay_p99": 0.01},
          {"kind": "capacity", "name": "dc1-dc2-cap", "interval": IV, "min_capacity": 5e8},
          {"kind": "host", "name": "self", "interval": IV, "max_timer_p99": 0.001, "require_clock_sync": True}]


def netprobe(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "netprobe", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def interval_records(k):
    ts = T0 + k * IV
    bad = 200 <= k < 230                       # 5 minutes at half the rate, 3 % loss on port 41002
    out = []
    for d in ("a->b", "b->a"):
        r = 1e8 if bad and d == "a->b" else 1.96e8 + 1e6 * np.sin(k / 20)
        out.append(Record(RESULT, "throughput", "dc1-dc2", {
            "dir": d, "sla_rate": rate(2e8), "rate": rate(r), "ratio": round(r / 2e8, 4),
            "rtt": seconds(0.002 + 0.001 * np.sin(k / 30) ** 2), "retrans_pct": percent(0.5 if bad else 0.01),
            "limited_by": "network" if bad else "pacer"}, ts))
    loss = {p: (3.0 if bad and p == 41002 else 0.0) for p in PORTS}
    out.append(Record(RESULT, "oneway", "dc1-dc2-owd", {
        "peer": "198.18.2.2:7171", "ports": 4, "loss": percent(sum(loss.values()) / 4),
        "delay_p50": seconds(0.002 + 0.0002 * np.cos(k / 15)), "delay_p99": seconds(0.004 + 0.001 * (k % 7) / 7),
        "clock_synced": True, "delay_bound": seconds(0.0004)}, ts))
    for p in PORTS:
        out.append(Record(RESULT, "oneway", "dc1-dc2-owd", {"peer": "198.18.2.2:7171", "port": p,
                                                           "loss": percent(loss[p])}, ts))
    if k % 6 == 0:
        c = 9.4e8 + 1e7 * np.sin(k / 50)
        out.append(Record(RESULT, "capacity", "dc1-dc2-cap", {"capacity": rate(c), "ci_lo": rate(c - 2e7),
                                                               "ci_hi": rate(c + 2e7)}, ts))
    out.append(Record(RESULT, "host", "self", {"late_p50": seconds(2e-5), "late_p99": seconds(8e-5 + 4e-5 * (k % 5)),
                                               "clock_synced": not 400 <= k < 420,
                                               "clock_maxerror": seconds(0.0002)}, ts))
    if k == 202:
        out.append(event("BREACH", "throughput", "dc1-dc2", metric="rate", value=rate(1e8), op=">=",
                         threshold=rate(1.9e8), dir="a->b", ts=ts + 0.01))
    if k == 232:
        out.append(event("CLEAR", "throughput", "dc1-dc2", metric="rate", value=rate(1.96e8), op=">=",
                         threshold=rate(1.9e8), dir="a->b", ts=ts + 0.01))
    return out


def run_sink(directory, ks):
    s = JsonFileSink(JsonFileConfig(path=str(directory / "results.json"), rotate_size=256 * 1024, keep=1000))
    s.start({"version": "0.1.0", "config_effective": {"probe": PROBES}})
    for k in ks:
        for r in interval_records(k):
            s.write(r)
    s.close()


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """Two daemon runs with the daemon stopped for an hour between them, the last rotated
    file truncated, a corrupt line, and an older version's file without a HEADER."""
    d = tmp_path_factory.mktemp("archive")
    run_sink(d, range(1, 500))                 # 500 intervals = 83 min
    run_sink(d, range(860, 1200))              # stopped for 360 intervals = 1 h
    stamp = iso_time(T0 + 450 * IV).encode()
    (cut,) = [f for f in d.glob("results.json.*.gz") if stamp in gzip.decompress(f.read_bytes())]
    data = cut.read_bytes()
    cut.write_bytes(data[:len(data) // 2])     # a copy cut short
    live = d / "results.json"
    with open(live, "ab") as fh:
        fh.write(b'{"ts":"2026-11-18T12:00:00.000Z","type":"RESULT","probe":"throughput","na\n')
    old = d / "results-0.0.9.json"
    old.write_text("".join(r.to_json() + "\n" for r in interval_records(1300)[:2]))
    return d, cut


@pytest.fixture(scope="module")
def report(archive, tmp_path_factory):
    d, _ = archive
    out = tmp_path_factory.mktemp("out")
    p = netprobe("report", d, "-o", out / "report.html", "--pdf", out / "report.pdf", "--json")
    assert p.returncode == 0 and "Traceback" not in p.stderr, p.stderr
    return out, json.loads(p.stdout), p


def test_each_damage_is_one_data_quality_line_never_a_traceback(archive, report):
    d, cut = archive
    _, j, _ = report
    q = j["data_quality"]
    assert [x for x in q if cut.name in x and "truncated gzip" in x], q
    assert [x for x in q if "results.json:" in x and "1 corrupt line(s)" in x], q
    assert [x for x in q if "results-0.0.9.json" in x and "no HEADER" in x], q
    stopped = set()
    for x in q:
        m = re.fullmatch(r"(.+): no intervals for \S+ \((\S+) to (\S+)\) and no GAP record says why", x)
        if m and read.iso_to_unix(m[2]) <= T0 + 499 * IV and read.iso_to_unix(m[3]) >= T0 + 859 * IV:
            stopped.add(m[1])
    assert stopped >= {"dc1-dc2 a->b", "dc1-dc2 b->a", "dc1-dc2-owd", "self"}, q


def test_compliance_and_breach_from_the_written_records(report):
    _, j, _ = report
    (b,) = j["breaches"]
    assert (b["name"], b["path"], b["metric"], b["worst"], b["sla"]) == \
        ("dc1-dc2", "a->b", "rate", "100Mbit/s", ">=190Mbit/s")
    assert b["duration_s"] == 30 * IV
    (c,) = [c for p in j["paths"] if p["name"] == "dc1-dc2" and p["path"] == "a->b" for c in p["compliance"]]
    assert c["measured_s"] < (1200 - 1) * IV            # the stopped hour and the cut file are not measured
    assert c["held_s"] == c["measured_s"] - 30 * IV     # all but the 30 bad intervals (none of them in the cut file)
    assert c["not_measured_pct"] > 100 * 360 / 1200


def _chromium(*args, timeout=120):
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("chromium is not installed (make test-deps installs it)", pytrace=False)
    with tempfile.TemporaryDirectory() as profile:
        p = subprocess.run([exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                            "--disable-background-networking", "--disable-component-update", "--disable-sync",
                            f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
                            "--force-device-scale-factor=1", "--window-size=1100,5200", *args],
                           capture_output=True, text=True, timeout=timeout)
    return p


CHECK = """<script>
window.addEventListener('load', () => {
  const out = [...document.images].map(i => {
    const r = i.getBoundingClientRect();
    return {ok: i.complete && i.naturalWidth > 0, alt: i.alt, x: r.left, y: r.top, w: r.width, h: r.height};
  });
  const pre = document.createElement('pre'); pre.id = 'image-check'; pre.textContent = JSON.stringify(out);
  document.body.appendChild(pre);
});
</script>"""


def test_chromium_loads_every_image_without_console_errors_and_draws_the_plots(report, tmp_path):
    out, j, _ = report
    page = (out / "report.html").read_text()
    assert not re.search(r"(src|href)=['\"]https?:", page), "the report must need no network"
    checked = tmp_path / "checked.html"
    checked.write_text(page.replace("</body>", CHECK + "</body>"))    # appended last: the layout above is the same
    p = _chromium("--virtual-time-budget=10000", "--dump-dom", checked.as_uri())
    assert p.returncode == 0, p.stderr[-2000:]
    dom = p.stdout
    assert not [line for line in p.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line
                or "Failed to load resource" in line], p.stderr[-2000:]
    assert "<title>netprobe SLA report</title>" in dom
    for name in ("dc1-dc2", "dc1-dc2-owd", "dc1-dc2-cap", "self", "a-&gt;b", "b-&gt;a"):
        assert name in dom, name
    images = json.loads(re.search(r'<pre id="image-check">(.*?)</pre>', dom, re.S).group(1).replace("&amp;", "&")
                        .replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", '"'))
    assert len(images) == 5 and all(i["ok"] for i in images), images     # tput, owd, heatmap, capacity, host
    shot = tmp_path / "shot.png"
    p = _chromium(f"--screenshot={shot}", (out / "report.html").as_uri())
    assert p.returncode == 0 and shot.exists(), p.stderr[-2000:]
    from matplotlib.image import imread
    px = imread(shot)[..., :3].mean(axis=2)          # 0 black .. 1 white
    seen = 0
    for i in images:
        y0, y1, x0, x1 = int(i["y"]), int(i["y"] + i["h"]), int(i["x"]), int(i["x"] + i["w"])
        if y1 > px.shape[0]:
            continue                                  # below the window: checked in the PDF instead
        area = px[y0:y1, x0:x1]
        inner = area[area.shape[0] // 10:-area.shape[0] // 10, area.shape[1] // 10:-area.shape[1] // 10]
        assert (inner < 0.9).mean() > 0.01, f"{i['alt']}: plot area blank"
        assert len(np.unique(np.round(inner, 2))) > 5, f"{i['alt']}: no plot drawn"
        seen += 1
    assert seen >= 3


def test_pdf_first_page_renders(report, tmp_path):
    out, _, _ = report
    pdf = out / "report.pdf"
    assert pdf.read_bytes()[:5] == b"%PDF-" and oct(pdf.stat().st_mode & 0o777) == "0o600"
    if shutil.which("pdftoppm") is None:
        pytest.fail("pdftoppm is not installed (make test-deps installs poppler-utils)", pytrace=False)
    p = subprocess.run(["pdftoppm", "-png", "-r", "60", "-f", "1", "-l", "1", pdf, tmp_path / "page"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    (png,) = tmp_path.glob("page*.png")
    from matplotlib.image import imread
    px = imread(png)[..., :3].mean(axis=2)
    assert px.shape[0] > 500 and (px < 0.5).mean() > 0.005        # text on the page
    if os.environ.get("NETPROBE_WRITE_SAMPLE"):                     # docs/report-sample.png is made this way
        subprocess.run(["pdftoppm", "-png", "-r", "50", "-gray", "-f", "1", "-l", "1", "-singlefile", pdf,
                        os.path.join(ROOT, "docs", "report-sample")], check=True, timeout=60)


def test_bad_input_is_one_line_and_an_exit_code(tmp_path, archive):
    d, _ = archive
    cases = [((tmp_path / "none",), 1, "no archive files found"),
             ((d, "--from", "yesterday"), 2, "--from 'yesterday': not a time"),
             ((d, "--from", "2026-11-19", "--to", "2026-11-18"), 2, "--to must be after --from"),
             ((d, "--probe", "nope"), 2, "no such probe"),
             ((d, "-o", tmp_path / "no" / "dir" / "r.html"), 1, "cannot write")]
    for args, code, message in cases:
        p = netprobe("report", *args)
        assert p.returncode == code and message in p.stderr and "Traceback" not in p.stderr, (args, p.stderr)
        assert len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_period_and_probe_filters(archive, tmp_path):
    d, _ = archive
    p = netprobe("report", d, "--probe", "dc1-dc2", "--from", str(T0 + 1000), "--to", "2026-11-18T12:00:00Z",
                 "--json")
    assert p.returncode == 0, p.stderr
    j = json.loads(p.stdout)
    assert {x["name"] for x in j["paths"]} == {"dc1-dc2"} and j["start"].startswith("2026-11-18T")
    assert not (tmp_path / "report.html").exists()
    with gzip.open(sorted(d.glob("*.gz"))[0]) as fh:
        assert fh.readline().startswith(b'{"type":"HEADER"')
