"""The report as one self-contained HTML file (plots as PNG data URIs, no network), and a
PDF printed from it by headless Chromium.

Plots are matplotlib (Agg), readable in greyscale: lines differ by style and marker,
not only by colour; the heatmap is a grey scale; every axis names its unit. Series
are binned to at most BINS points per plot (mean, and the worst value as a band), so a
month of 10 s intervals draws as fast as a day; an empty bin is a break in the line.
"""
import base64
import html
import io
import math
import os
import shutil
import subprocess
import tempfile

import numpy as np

from netprobe.errors import NetprobeError
from netprobe.report.sla import hms, interval_of, metrics
from netprobe.results import iso_time

BINS = 600
WIDTH, HEIGHT, DPI = 9.0, 2.5, 80
STYLES = (("-", "o", "0.1"), ("--", "s", "0.45"), (":", "^", "0.3"), ("-.", "D", "0.6"))


def _plt():
    try:
        import matplotlib
    except ImportError:
        raise NetprobeError("the HTML report needs matplotlib (Debian: apt install python3-matplotlib); "
                            "--json alone does not") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    plt.rcParams.update({"font.size": 8, "axes.grid": True, "grid.color": "0.85", "lines.linewidth": 1.0,
                         "svg.fonttype": "none"})
    return plt


def binned(ts, values, start, end, nbins=BINS):
    """(centres as datetime64, mean, min, max) of `values` in nbins equal time bins; NaN where
    empty. `ts` is sorted (a Series' stamps), so each bin is one slice."""
    ok = ~np.isnan(values)
    ts, v = ts[ok], values[ok]
    edges = start + (end - start) * np.arange(nbins + 1) / nbins
    cut = np.searchsorted(ts, edges, side="right")
    cut[0] = np.searchsorted(ts, start, side="left")
    n = np.diff(cut)
    mean, lo, hi = (np.full(nbins, np.nan) for _ in range(3))
    full = np.flatnonzero(n > 0)
    if len(full):
        at = cut[:-1][full]
        v = v[:cut[-1]]                       # past the end: not in the last bin
        sums = np.add.reduceat(v, at)
        mean[full] = sums / n[full]
        lo[full] = np.minimum.reduceat(v, at)
        hi[full] = np.maximum.reduceat(v, at)
    centres = (((edges[:-1] + edges[1:]) / 2) * 1000).astype("datetime64[ms]")
    return centres, mean, lo, hi


def _png(fig):
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    _plt().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _figure(rows=1):
    plt = _plt()
    fig, axes = plt.subplots(rows, 1, figsize=(WIDTH, HEIGHT * rows), sharex=True, squeeze=False)
    _margins(fig)
    for ax in axes[:, 0]:
        ax.xaxis_date()
    axes[-1, 0].set_xlabel("time (UTC)")
    return fig, axes[:, 0]


def _margins(fig, right=0.15):
    """Fixed margins in inches (room for the y label and tick labels, and the time axis):
    matplotlib's constrained layout would measure every label of every figure again, which
    took more time than drawing them."""
    w, h = fig.get_size_inches()
    fig.subplots_adjust(left=0.8 / w, right=1 - right / w, bottom=0.5 / h, top=1 - 0.12 / h, hspace=0.12)


def _limits(ax, start, end):
    ax.set_xlim(np.datetime64(int(start * 1000), "ms"), np.datetime64(int(end * 1000), "ms"))


def plot_throughput(series, cfg, start, end):
    """Achieved rate per direction against its SLA line; RTT and retransmits below."""
    fig, (ax, ax_rtt, ax_re) = _figure(3)
    for n, s in enumerate(series):
        ls, mk, grey = STYLES[n % len(STYLES)]
        t, mean, lo, _ = binned(s.ts, s.cols["rate"] / 1e6, start, end)
        ax.plot(t, mean, ls=ls, color=grey, label=f"{s.sub} mean")
        ax.fill_between(t, lo, mean, color=grey, alpha=0.25, lw=0, label=f"{s.sub} worst interval")
        for m in metrics("throughput", s.sub, cfg):
            if m.metric == "rate":
                sla = np.nanmedian(s.cols["sla_rate"]) * m.threshold / 1e6 if len(s.ts) else math.nan
                ax.axhline(sla, ls=ls, color="0", lw=1.6, label=f"{s.sub} SLA ({sla:.4g} Mbit/s)")
        t, rtt, _, _ = binned(s.ts, s.cols["rtt"] * 1e3, start, end)
        ax_rtt.plot(t, rtt, ls=ls, color=grey, marker=mk, markevery=max(1, BINS // 12), ms=3,
                    label=f"{s.sub} mean RTT")
        t, re_, _, _ = binned(s.ts, s.cols["retrans_pct"], start, end)
        ax_re.plot(t, re_, ls=ls, color=grey, marker=mk, markevery=max(1, BINS // 12), ms=3,
                   label=f"{s.sub} retransmitted")
    ax.set_ylabel("throughput (Mbit/s)")
    ax_rtt.set_ylabel("RTT (ms)")
    ax_re.set_ylabel("retransmitted (% of bytes)")
    for a in (ax, ax_rtt, ax_re):
        a.legend(loc="lower left", fontsize=6, ncol=4)
        _limits(a, start, end)
    return _png(fig)


def plot_oneway(s, start, end):
    """One-way delay p50 and p99 with the clock error bound as a band around p99."""
    fig, (ax,) = _figure(1)
    t, p50, _, _ = binned(s.ts, s.cols["delay_p50"] * 1e3, start, end)
    _, p99, _, _ = binned(s.ts, s.cols["delay_p99"] * 1e3, start, end)
    _, bound, _, _ = binned(s.ts, s.cols["delay_bound"] * 1e3, start, end)
    ax.fill_between(t, p99 - bound, p99 + bound, color="0.75", lw=0, label="p99 ± clock error bound")
    ax.plot(t, p50, "-", color="0.1", label="p50")
    ax.plot(t, p99, "--", color="0.35", label="p99")
    ax.set_ylabel("one-way delay (ms)")
    ax.legend(loc="upper left", fontsize=6, ncol=3)
    _limits(ax, start, end)
    return _png(fig)


def plot_loss_heatmap(ports, start, end):
    """Loss per source port over time (the ECMP view): grey scale, darker = more loss."""
    plt = _plt()
    nb = min(BINS, 300)
    grid = np.full((len(ports), nb), np.nan)
    for i, s in enumerate(ports):
        _, mean, _, _ = binned(s.ts, s.cols["loss"], start, end, nb)
        grid[i] = mean
    fig, ax = plt.subplots(figsize=(WIDTH, max(1.6, 0.16 * len(ports) + 0.8)))
    _margins(fig, right=0.2)
    x0, x1 = (np.datetime64(int(v * 1000), "ms").astype(object) for v in (start, end))
    import matplotlib.dates as mdates
    img = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap="Greys", interpolation="nearest",
                    extent=(mdates.date2num(x0), mdates.date2num(x1), len(ports) - 0.5, -0.5), vmin=0)
    ax.xaxis_date()
    ax.set_yticks(range(len(ports)))
    ax.set_yticklabels([s.sub for s in ports], fontsize=6)
    ax.set_ylabel("source port (UDP)")
    ax.set_xlabel("time (UTC)")
    ax.grid(False)
    fig.colorbar(img, ax=ax, label="loss (%)", pad=0.01)
    return _png(fig)


def plot_capacity(s, start, end):
    """Capacity estimates with their confidence intervals."""
    fig, (ax,) = _figure(1)
    t = (s.ts * 1000).astype("datetime64[ms]")
    c, lo, hi = (s.cols[k] / 1e6 for k in ("capacity", "ci_lo", "ci_hi"))
    if len(t) > BINS:
        t, c, _, _ = binned(s.ts, s.cols["capacity"] / 1e6, start, end)
        _, lo, _, _ = binned(s.ts, s.cols["ci_lo"] / 1e6, start, end)
        _, hi, _, _ = binned(s.ts, s.cols["ci_hi"] / 1e6, start, end)
    err = np.vstack([np.clip(c - lo, 0, None), np.clip(hi - c, 0, None)])
    ax.errorbar(t, c, yerr=np.nan_to_num(err), fmt="o", ms=3, color="0.1", ecolor="0.5", capsize=2,
                label="estimate with interval")
    ax.set_ylabel("capacity (Mbit/s)")
    ax.legend(loc="lower left", fontsize=6)
    _limits(ax, start, end)
    return _png(fig)


def plot_host(s, start, end):
    """The measurer's trust: clock synchronised, and timer lateness p50/p99."""
    fig, (ax_sync, ax_late) = _figure(2)
    t, _, lo, _ = binned(s.ts, s.cols["clock_synced"], start, end)
    ax_sync.step(t, lo, where="mid", color="0.1", label="clock synchronised (worst in bin)")
    ax_sync.set_yticks([0, 1])
    ax_sync.set_yticklabels(["no", "yes"])
    ax_sync.set_ylim(-0.2, 1.2)
    ax_sync.set_ylabel("clock synced (yes/no)")
    t, p50, _, _ = binned(s.ts, s.cols["late_p50"] * 1e3, start, end)
    _, _, _, p99_hi = binned(s.ts, s.cols["late_p99"] * 1e3, start, end)
    ax_late.plot(t, p50, "-", color="0.1", label="timer lateness p50")
    ax_late.plot(t, p99_hi, "--", color="0.45", label="timer lateness p99 (worst in bin)")
    ax_late.set_ylabel("timer lateness (ms)")
    for a in (ax_sync, ax_late):
        a.legend(loc="upper left", fontsize=6, ncol=2)
        _limits(a, start, end)
    return _png(fig)


def _pct(x):
    return "–" if math.isnan(x) else f"{x:.3f}%"


CSS = """
body{font-family:sans-serif;font-size:10pt;margin:1.5em;color:#000}
h1{font-size:16pt}h2{font-size:13pt;border-bottom:1px solid #888;margin-top:1.4em}h3{font-size:11pt}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #999;padding:2px 6px;text-align:left}
th{background:#e8e8e8}td.n{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;display:block;margin:.3em 0}.q li{margin:.15em 0}
@media print{h2{page-break-before:auto}img{page-break-inside:avoid}}
"""


def html_report(archive, report, title="netprobe SLA report"):
    """The whole report as one HTML string."""
    e = html.escape
    start, end = report.start, report.end
    out = [f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{e(title)}</title>",
           f"<style>{CSS}</style></head><body>",
           f"<h1>{e(title)}</h1>",
           f"<p>Period {e(iso_time(start))} to {e(iso_time(end))} ({hms(end - start)}); "
           f"{archive.files} file(s), {archive.lines} line(s) read.</p>",
           "<h2>SLA compliance</h2>",
           "<p>Held: share of the measured time each SLA held. Not measured: share of the period with no "
           "interval judging the metric (GAPs, missing intervals); it never counts as compliant.</p>",
           "<table><tr><th>probe</th><th>kind</th><th>path</th><th>metric</th><th>SLA</th><th>held</th>"
           "<th>measured</th><th>not measured</th></tr>"]
    for p in report.paths:
        for c in p.compliance:
            out.append(f"<tr><td>{e(p.name)}</td><td>{e(p.kind)}</td><td>{e(p.sub)}</td><td>{e(c.metric)}</td>"
                       f"<td>{e(c.sla)}</td><td class=n>{_pct(c.held_pct)}</td><td class=n>{hms(c.measured)}</td>"
                       f"<td class=n>{_pct(c.not_measured_pct)}</td></tr>")
    out.append("</table><h2>Breaches</h2>")
    if report.breaches:
        out.append("<table><tr><th>probe</th><th>path</th><th>metric</th><th>start (UTC)</th><th>end (UTC)</th>"
                   "<th>duration</th><th>worst</th><th>SLA</th></tr>")
        for b in report.breaches:
            out.append(f"<tr><td>{e(b.name)}</td><td>{e(b.sub)}</td><td>{e(b.metric)}</td>"
                       f"<td>{e(iso_time(b.start))}</td>"
                       f"<td>{'open' if math.isnan(b.end) else e(iso_time(b.end))}</td>"
                       f"<td class=n>{hms(b.duration)}</td><td class=n>{e(b.worst)}</td><td>{e(b.sla)}</td></tr>")
        out.append("</table>")
    else:
        out.append("<p>No breach in the period.</p>")
    out.append("<h2>Data quality</h2>")
    if report.quality:
        out.append("<ul class=q>" + "".join(f"<li>{e(q)}</li>" for q in report.quality) + "</ul>")
    else:
        out.append("<p>No problem found: every file read whole, no gap in any probe's intervals.</p>")
    out.extend(_plots(archive, report))
    out.append("</body></html>")
    return "\n".join(out)


def _plots(archive, report):
    e = html.escape
    names = {p.name for p in report.paths}
    by_name = {}
    for s in archive.series:
        if s.name in names:
            by_name.setdefault((s.kind, s.name), []).append(s)
    start, end = report.start, report.end
    out = ["<h2>Plots</h2>"]
    for (kind, name), group in sorted(by_name.items()):
        cfg = archive.config(name)
        imgs = []
        if kind == "throughput":
            imgs.append((f"{name}: throughput against the SLA, RTT and retransmits",
                         plot_throughput(group, cfg, start, end)))
        elif kind == "oneway":
            whole = [s for s in group if s.sub == ""]
            ports = [s for s in group if s.sub != ""]
            if whole:
                imgs.append((f"{name}: one-way delay", plot_oneway(whole[0], start, end)))
            if ports:
                imgs.append((f"{name}: loss per source port", plot_loss_heatmap(ports, start, end)))
        elif kind == "capacity":
            imgs.append((f"{name}: capacity estimates", plot_capacity(group[0], start, end)))
        elif kind == "host":
            imgs.append((f"{name}: host probe trust (clock, timers)", plot_host(group[0], start, end)))
        if imgs:
            iv = interval_of(group[0], cfg)
            out.append(f"<h3>{e(name)} ({e(kind)}, interval {iv:g} s)</h3>")
            out.extend(f"<img alt='{e(alt)}' src='{src}'>" for alt, src in imgs)
    return out


def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    raise NetprobeError("--pdf needs Chromium (Debian: apt install chromium)")


def pdf(html_path, pdf_path, timeout=120):
    """Print the HTML file to PDF with headless Chromium (own throw-away profile, no network)."""
    exe = chromium()
    with tempfile.TemporaryDirectory(prefix="netprobe-chromium-") as profile:
        cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--no-pdf-header-footer", f"--print-to-pdf={pdf_path}",
               "file://" + os.path.abspath(html_path)]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise NetprobeError(f"chromium did not print {pdf_path} within {timeout}s") from None
    if p.returncode != 0 or not os.path.exists(pdf_path) or os.path.getsize(pdf_path) == 0:
        last = (p.stderr.strip().splitlines() or ["no message"])[-1]
        raise NetprobeError(f"chromium could not print {pdf_path}: {last}")
