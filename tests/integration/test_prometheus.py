"""[output.prometheus] scraped by a real Prometheus (Debian's 2.42) in the netns lab.

A daemon in A runs host, throughput, oneway (per port) and flows probes against a peer
in B, through R with loss and a rate limit; Prometheus, also in A, scrapes it every
second. Every sample Prometheus stored is matched, by its scrape time, to the interval
that netprobe_interval_end_timestamp_seconds names in the same scrape, and must equal
that interval's RESULT field as the daemon printed it (--json): exactly for counts
(counters: the sum of the field over the intervals so far), within 1 ulp for floats.
The expected names, units and scales are written out here from the naming rules, not
taken from the sink.
"""
import datetime
import json
import math
import shutil
import subprocess
import sys
import time
import urllib.parse

import pytest

from tests.integration.test_oneway import ROOT, netprobe, wait_listening

PY = sys.executable
SCRAPE_PORT, PROM_PORT, PEER_PORT = 19471, 19090, 7171
FETCH = "import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())"

# (kind, scope) -> RESULT field -> (metric name, how, divisor); how: gauge, sum (counter summed over
# intervals), total (the probe's own running total). Rates: bit/s -> bytes/s; percentages -> ratios.
EXPECTED = {
    ("host", None): {"late_p99": ("netprobe_host_late_p99_seconds", "gauge", 1),
                     "clock_maxerror": ("netprobe_host_clock_maxerror_seconds", "gauge", 1),
                     "clock_synced": ("netprobe_host_clock_synced", "gauge", 1),
                     "ticks": ("netprobe_host_ticks_total", "sum", 1),
                     "missed": ("netprobe_host_missed_total", "sum", 1)},
    ("throughput", None): {"rate": ("netprobe_throughput_rate_bytes_per_second", "gauge", 8),
                           "sla_rate": ("netprobe_throughput_sla_rate_bytes_per_second", "gauge", 8),
                           "rtt_p99": ("netprobe_throughput_rtt_p99_seconds", "gauge", 1),
                           "retrans_pct": ("netprobe_throughput_retrans_ratio", "gauge", 100),
                           "samples": ("netprobe_throughput_samples", "gauge", 1),
                           "retrans_total": ("netprobe_throughput_retrans_total", "total", 1)},
    ("oneway", None): {"loss": ("netprobe_oneway_loss_ratio", "gauge", 100),
                       "delay_p99": ("netprobe_oneway_delay_p99_seconds", "gauge", 1),
                       "sent": ("netprobe_oneway_sent_total", "sum", 1),
                       "received": ("netprobe_oneway_received_total", "sum", 1),
                       "lost": ("netprobe_oneway_lost_total", "sum", 1)},
    ("oneway", "port"): {"lost": ("netprobe_oneway_port_lost_total", "sum", 1),
                         "sent": ("netprobe_oneway_port_sent_total", "sum", 1),
                         "delay_max": ("netprobe_oneway_port_delay_max_seconds", "gauge", 1)},
    ("flows", "group"): {"flows": ("netprobe_flows_flows", "gauge", 1),
                         "rtt_p99": ("netprobe_flows_rtt_p99_seconds", "gauge", 1),
                         "retrans": ("netprobe_flows_retrans_total", "sum", 1)},
    ("flows", "sampler"): {"dumps": ("netprobe_flows_dumps_total", "sum", 1),
                           "sockets": ("netprobe_flows_sockets", "gauge", 1)},
}


BUCKETS = ["100us", "1ms", "5ms", "20ms", "100ms"]
HISTOGRAMS = {("throughput", "rtt_hist"): "netprobe_throughput_rtt_seconds",
              ("oneway", "delay_hist"): "netprobe_oneway_delay_seconds"}


def _config(lab):
    peer = f"{lab.b4}:{PEER_PORT}"
    return f"""
[[probe]]
kind = "host"
name = "self"
interval = "2s"

[[probe]]
kind = "throughput"
name = "tp"
peer = "{peer}"
rate = "30M"
interval = "2s"
window = "2s"
breach_after = 1
rtt_buckets = {json.dumps(BUCKETS)}

[[probe]]
kind = "oneway"
name = "ow"
peer = "{peer}"
ecmp_width = 2
gap = "2ms"
interval = "2s"
per_port = true
delay_buckets = {json.dumps(BUCKETS)}

[[probe]]
kind = "flows"
name = "fl"
dport = "{PEER_PORT}"
interval = "2s"

[output.stdout]
format = "json"

[output.prometheus]
listen = "127.0.0.1:{SCRAPE_PORT}"
"""


def _fetch(lab, url):
    return lab.run("a", [PY, "-c", FETCH, url], timeout=15).stdout


def _query(lab, expr, at):
    url = f"http://127.0.0.1:{PROM_PORT}/api/v1/query?" + urllib.parse.urlencode({"query": expr, "time": at})
    body = json.loads(_fetch(lab, url))
    assert body["status"] == "success", body
    return body["data"]["result"]


def _labels(rec, peers):
    labels = {"probe": rec["name"]}
    peer = rec.get("peer") or peers.get(rec["name"])
    if peer:
        labels["peer"] = peer
    for key in ("dir", "group", "port"):
        if rec.get(key) is not None:
            labels[key] = str(rec[key])
    return tuple(sorted(labels.items()))


def _scope(rec):
    return "port" if "port" in rec and "scope" not in rec else rec.get("scope")


def _unix(rec):
    return datetime.datetime.fromisoformat(rec["ts"].replace("Z", "+00:00")).timestamp()


def _close(got, want):
    return got == want or abs(got - want) <= math.ulp(want)


@pytest.mark.lab
@pytest.mark.slow
def test_prometheus_values_equal_result_fields_for_each_kind(make_lab, tmp_path):
    for tool in ("prometheus", "promtool"):
        assert shutil.which(tool), f"{tool} missing: apt-get install -y prometheus"
    lab = make_lab(offload="off", rate_ab="20mbit", loss_ab=1)
    serve = lab.popen("b", netprobe("serve", "--listen", f"{lab.b4}:{PEER_PORT}", "--allow", "198.18.0.0/15",
                                    "--duration", "60s"), cwd=ROOT)
    wait_listening(lab.b4, PEER_PORT, lab=lab)
    cfg = tmp_path / "netprobe.toml"
    cfg.write_text(_config(lab))
    prom_cfg = tmp_path / "prometheus.yml"
    prom_cfg.write_text(f"global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n"
                        f"  - job_name: netprobe\n    static_configs:\n"
                        f"      - targets: ['127.0.0.1:{SCRAPE_PORT}']\n")
    daemon = lab.popen("a", netprobe("run", "-c", cfg, "--duration", "15s"), cwd=ROOT)
    prom = lab.popen("a", ["timeout", "90", "prometheus", f"--config.file={prom_cfg}",
                           f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{PROM_PORT}"])
    try:
        time.sleep(9)
        page = _fetch(lab, f"http://127.0.0.1:{SCRAPE_PORT}/metrics")
        lint = subprocess.run(["promtool", "check", "metrics"], input=page, capture_output=True, text=True,
                              timeout=30)
        assert lint.returncode == 0, lint.stdout + lint.stderr
        out, err = daemon.communicate(timeout=60)
        assert daemon.returncode == 0 and "Traceback" not in err, err
        time.sleep(1)
        samples = {}
        for series in _query(lab, '{__name__=~"netprobe_.+"}[60s]', time.time()):
            labels = dict(series["metric"])
            name = labels.pop("__name__")
            labels.pop("job"), labels.pop("instance")
            samples[name, tuple(sorted(labels.items()))] = [(t, float(v)) for t, v in series["values"]]
    finally:
        prom.terminate()
        prom.wait(timeout=10)
        serve.terminate()
        serve.wait(timeout=10)
    assert prom.returncode in (0, -15, 143)
    recs = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    results = [r for r in recs if r["type"] == "RESULT" and (r["probe"], _scope(r)) in EXPECTED]
    peers = {"tp": f"{lab.b4}:{PEER_PORT}", "ow": f"{lab.b4}:{PEER_PORT}"}
    by_series = {}
    for r in results:
        by_series.setdefault((r["probe"], _scope(r), _labels(r, peers)), []).append(r)
    checked = {}
    for (kind, scope, labels), rs in by_series.items():
        end_key = ("netprobe_interval_end_timestamp_seconds", tuple(sorted(dict(labels, kind=kind).items())))
        ends = dict(samples.get(end_key, []))
        for field, (name, how, div) in EXPECTED[kind, scope].items():
            for t, got in samples.get((name, labels), []):
                assert t in ends, f"{name}{labels} at {t} has no interval end in the same scrape"
                upto = [r for r in rs if _unix(r) <= ends[t] + 0.0006]   # printed times are rounded to 1 ms
                assert upto and abs(_unix(upto[-1]) - ends[t]) < 0.0006, f"no RESULT of {kind} ending at {ends[t]}"
                if how == "sum":
                    want = sum(r[field] for r in upto)
                else:
                    v = upto[-1][field]
                    want = float(v) / div
                assert _close(got, want), f"{name}{labels} at {t}: Prometheus {got!r}, RESULT {want!r}"
                checked[kind, scope, field] = checked.get((kind, scope, field), 0) + 1
        for (hkind, field), name in HISTOGRAMS.items():
            if hkind != kind or scope is not None:
                continue
            for t, got_count in samples.get((name + "_count", labels), []):
                upto = [r for r in rs if _unix(r) <= ends[t] + 0.0006]
                hs = [r[field] for r in upto]
                assert got_count == sum(h["count"] for h in hs)
                total = 0.0
                for h in hs:
                    total += h["sum"]
                assert _close(dict(samples[name + "_sum", labels])[t], total)
                for i, le in enumerate(["0.0001", "0.001", "0.005", "0.02", "0.1"]):
                    bucket = dict(samples[name + "_bucket", tuple(sorted(dict(labels, le=le).items()))])[t]
                    assert bucket == sum(h["n"][i] for h in hs), (name, le)
                assert dict(samples[name + "_bucket", tuple(sorted(dict(labels, le="+Inf").items()))])[t] == got_count
                checked[kind, field] = checked.get((kind, field), 0) + 1
    assert all(checked.get(k, 0) >= 2 for k in HISTOGRAMS), checked
    breach = [r for r in recs if r["type"] == "BREACH" and r["probe"] == "throughput" and r["metric"] == "rate"]
    assert breach, "the rate limit below the SLA gave no BREACH"
    key = ("netprobe_breach", tuple(sorted({"probe": "tp", "kind": "throughput", "metric": "rate",
                                            "dir": breach[0]["dir"], "peer": peers["tp"]}.items())))
    assert samples[key][-1][1] == 1.0
    for (kind, scope), fields in EXPECTED.items():
        for field in fields:
            assert checked.get((kind, scope, field), 0) >= 2, f"{kind}/{scope}/{field}: too few scraped intervals"
    ow = [r for r in results if r["probe"] == "oneway" and "port" not in r]
    assert sum(r["lost"] for r in ow) > 0                      # the injected loss is what was compared
    tp = [r for r in results if r["probe"] == "throughput" and r["dir"] == "a->b" and "rate" in r]
    assert tp and min(r["rate"] for r in tp[1:] or tp) < 21e6   # and the rate limit


def _sink(tmp_path, **table):
    from netprobe.config.schema import Where, build
    from netprobe.outputs.prometheus import PrometheusConfig, PrometheusSink
    return PrometheusSink(build(PrometheusConfig, table, Where("t.toml", "output.prometheus")))


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not shutil.which("openssl"), reason="needs openssl to make a test certificate")
def test_tls_and_basic_auth_and_openmetrics(tmp_path):
    import base64
    import ssl
    import urllib.error
    import urllib.request

    from netprobe.results import RESULT, Record, seconds
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", tmp_path / "k.pem", "-out",
                    tmp_path / "c.pem"], check=True, capture_output=True, timeout=60)
    (tmp_path / "pw").write_text("s3cret\n")
    port = _free_port()
    sink = _sink(tmp_path, listen=f"127.0.0.1:{port}", tls_cert_file=str(tmp_path / "c.pem"),
                 tls_key_file=str(tmp_path / "k.pem"), basic_auth_user="prom",
                 basic_auth_password_file=str(tmp_path / "pw"))
    sink.start({})
    try:
        sink.write(Record(RESULT, "host", "self", {"late_p99": seconds(0.25), "ticks": 7}))
        ctx = ssl.create_default_context(cafile=str(tmp_path / "c.pem"))
        url = f"https://127.0.0.1:{port}/metrics"

        def get(auth=None, accept=None, path=url):
            req = urllib.request.Request(path)
            if auth:
                req.add_header("Authorization", "Basic " + base64.b64encode(auth.encode()).decode())
            if accept:
                req.add_header("Accept", accept)
            with urllib.request.urlopen(req, context=ctx, timeout=5) as r:
                return r.headers["Content-Type"], r.read().decode()
        for auth in (None, "prom:wrong", "other:s3cret"):
            with pytest.raises(urllib.error.HTTPError) as exc:
                get(auth)
            assert exc.value.code == 401
        ctype, body = get("prom:s3cret")
        assert ctype.startswith("text/plain; version=0.0.4")
        assert 'netprobe_host_late_p99_seconds{probe="self"} 0.25' in body
        assert 'netprobe_host_ticks_total{probe="self"} 7.0' in body
        ctype, body = get("prom:s3cret", accept="application/openmetrics-text; version=0.0.1")
        assert ctype.startswith("application/openmetrics-text") and body.endswith("# EOF\n")
        with pytest.raises(urllib.error.HTTPError) as exc:
            get("prom:s3cret", path=f"https://127.0.0.1:{port}/")
        assert exc.value.code == 404
        with pytest.raises(OSError):                          # plain HTTP is not served
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
    finally:
        sink.close()


@pytest.mark.parametrize("table, message", [
    ({"listen": "9471"}, 'output.prometheus.listen: "9471" is not HOST:PORT'),
    ({"tls_cert_file": "/x.pem"}, "output.prometheus.tls_key_file: tls_cert_file and tls_key_file go together"),
    ({"basic_auth_user": "u"}, "output.prometheus.basic_auth_password_file: basic_auth_user and"),
])
def test_config_errors_name_the_key(tmp_path, table, message):
    from netprobe.errors import ConfigError
    with pytest.raises(ConfigError) as exc:
        _sink(tmp_path, **table)
    assert message in str(exc.value)


def test_reload_with_a_changed_output_table_keeps_the_listener(tmp_path):
    """A SIGHUP that changes [output.prometheus] starts the new sink while the old one still
    holds the port: the new one waits for it, and the scrapes go on."""
    import signal
    import threading
    import urllib.request
    port = _free_port()
    cfg = tmp_path / "n.toml"
    text = (f'[[probe]]\nkind = "host"\nname = "self"\ninterval = "500ms"\n\n[output.prometheus]\n'
            f'listen = "127.0.0.1:{port}"\nexpire = "10m"\n')
    cfg.write_text(text)
    p = subprocess.Popen([PY, "-m", "netprobe", "run", "-c", str(cfg), "--duration", "30s"], cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    err = []
    threading.Thread(target=lambda: err.extend(p.stderr), daemon=True).start()

    def scrape():
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
                return r.read().decode()
        except OSError:
            return ""

    def until(pred, timeout):
        end = time.monotonic() + timeout
        while not pred() and time.monotonic() < end:
            time.sleep(0.05)
        return pred()
    try:
        assert until(lambda: "netprobe_host_ticks_total" in scrape(), 15)
        cfg.write_text(text.replace('expire = "10m"', 'expire = "20m"'))
        p.send_signal(signal.SIGHUP)
        assert until(lambda: any("reloaded" in line for line in err), 15), err
        # the old sink is closed once the reload logged: what answers now is the new one
        assert until(lambda: "netprobe_host_ticks_total" in scrape(), 10)
    finally:
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=20)
    assert p.returncode == 0
    assert not any("cannot listen" in line or "Traceback" in line for line in err), err


def test_both_formats_parse_with_histograms_counters_and_breach(tmp_path):
    """The text format passes promtool; the OpenMetrics form parses with prometheus_client's
    OpenMetrics parser, histogram and counter semantics included."""
    import urllib.request

    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    from netprobe.results import BREACH, RESULT, Record, event, percent, seconds
    port = _free_port()
    sink = _sink(tmp_path, listen=f"127.0.0.1:{port}")
    sink.start({"host": {"hostname": "h", "kernel": "6.1", "clocksource": "tsc"}})
    hist = {"le": [0.001, 0.01], "n": [3, 9], "count": 10, "sum": 0.05}
    try:
        for _ in range(2):
            sink.write(Record(RESULT, "oneway", "ow", {"peer": "p:1", "sent": 10, "lost": 1, "loss": percent(10),
                                                      "delay_p99": seconds(0.02), "delay_hist": hist}))
        sink.write(event(BREACH, "oneway", "ow", metric="loss", value=percent(10), op="<=",
                         threshold=percent(1), peer="p:1"))

        def get(accept):
            req = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers={"Accept": accept})
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.read().decode()
        text = get("text/plain")
        om = get("application/openmetrics-text; version=0.0.1")
    finally:
        sink.close()
    lint = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    fams = {f.name: f for f in text_string_to_metric_families(om)}
    h = fams["netprobe_oneway_delay_seconds"]
    assert h.type == "histogram"
    got = {(s.name, s.labels.get("le")): s.value for s in h.samples}
    assert got[("netprobe_oneway_delay_seconds_bucket", "0.001")] == 6
    assert got[("netprobe_oneway_delay_seconds_bucket", "0.01")] == 18
    assert got[("netprobe_oneway_delay_seconds_bucket", "+Inf")] == 20
    assert got[("netprobe_oneway_delay_seconds_count", None)] == 20
    assert got[("netprobe_oneway_delay_seconds_sum", None)] == 0.1
    assert fams["netprobe_oneway_lost"].type == "counter"
    assert [s.value for s in fams["netprobe_oneway_lost"].samples if s.name.endswith("_total")] == [2]
    (b,) = fams["netprobe_breach"].samples
    assert b.value == 1 and b.labels == {"probe": "ow", "peer": "p:1", "kind": "oneway", "metric": "loss"}


def test_suspect_hop_is_a_breach_label_until_its_clear(tmp_path):
    """Path localisation's BREACH names a hop: the exporter carries it as the suspect_hop label
    the fleet rule counts by (read back with prometheus_client's parser), 0 after the CLEAR."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from netprobe.results import BREACH, CLEAR, event, percent
    port = _free_port()
    sink = _sink(tmp_path, listen=f"127.0.0.1:{port}")
    sink.start({})
    kw = dict(metric="loss", value=percent(20), op="<=", threshold=percent(1), peer="p:1",
              suspect_hop="198.18.11.2", hop=2, ports_bad="7/7", ports_clean="0/9", confidence="high")

    def breach():
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            fams = {f.name: f for f in text_string_to_metric_families(r.read().decode())}
        return [(s.labels, s.value) for s in fams["netprobe_breach"].samples]
    try:
        sink.write(event(BREACH, "oneway", "ow", **kw))
        labels = {"probe": "ow", "peer": "p:1", "kind": "oneway", "metric": "loss", "suspect_hop": "198.18.11.2"}
        assert breach() == [(labels, 1.0)]
        sink.write(event(CLEAR, "oneway", "ow", **kw))
        assert breach() == [(labels, 0.0)]
    finally:
        sink.close()
