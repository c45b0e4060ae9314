"""`loco` compatibility: format strings, loco's CSV dump and offline re-analysis (-r, -b)."""
import numpy as np
import pytest

from netprobe.errors import UsageError
from netprobe.probes.capacity import analysis as A
from netprobe.probes.capacity import loco
from tests.reference import capacity_sim as sim
from tests.unit.test_capacity_analysis import MAX, spec


def test_format_tokens():
    assert loco.parse_format(loco.DEFAULT_FORMAT) == ["be", "am", "AM", "bl", "bu", "bw", "pd", "ul"]
    assert loco.parse_format("%lt%pm%ps") == ["lt", "pm", "ps"]
    for bad in ("", "%be,", "be%", "%bex", "%zz", "%be%b"):
        with pytest.raises(UsageError, match="format"):
            loco.parse_format(bad)


def test_render_uses_locos_number_style():
    vals = {"be": 94.5, "am": 1, "AM": "MODE", "bl": 93.1, "bu": 95.9, "bw": 11.8, "pd": 20.1234, "ul": 0.0}
    assert loco.render(loco.parse_format(loco.DEFAULT_FORMAT), vals) == \
        "94.5000,1,MODE,93.1000,95.9000,11.8000,20.1234,0.0000"


def measured(capacity=80e6, **kw):
    plan = sim.plan_rows(spec())
    return A.measure(sim.simulate(plan, capacity, **kw), plan)


def test_csv_round_trip_and_offline_analysis(tmp_path, capsys):
    meas = measured()
    path = tmp_path / "loco.csv"
    loco.write_csv(path, meas)
    lines = path.read_text().splitlines()
    n1 = int(lines[0])
    assert n1 == len(meas.of(A.PHASE1)) and int(lines[n1 + 1]) == len(meas.of(A.PHASE2))
    (r1, d1), (r2, d2) = loco.read_csv(path)
    assert r1 == pytest.approx(meas.of(A.PHASE1), rel=1e-5) and r2 == pytest.approx(meas.of(A.PHASE2), rel=1e-5)
    assert loco.main(["-r", str(path), "-f", "%be%am%AM%bl%bu"]) == 0
    be, am, assessed, bl, bu = capsys.readouterr().out.strip().split(",")
    assert float(be) == pytest.approx(80, rel=0.01) and (am, assessed) == ("1", "MODE")
    assert float(bl) <= float(be) <= float(bu)
    # -b works offline (loco recomputed the bin width and ignored it)
    assert loco.main(["-r", str(path), "-b", "3.5", "-f", "%bw"]) == 0
    assert capsys.readouterr().out.strip() == "3.5000"


def test_offline_recovers_sizes_and_agrees_with_the_online_estimate(tmp_path, capsys):
    """Pairs of different sizes that disagree (a late shaper timer) make the online estimate come
    from max-size pairs; -r recovers each pair's size from rate x dispersion and does the same."""
    meas = measured(40e6, bucket=1514, timer_late_ns=60_000, cross_bps=12e6, cross_size=1042, access_bps=100e6)
    online = A.estimate(meas, MAX)
    assert online.method == "max-size"
    path = tmp_path / "loco.csv"
    loco.write_csv(path, meas)
    assert loco.main(["-r", str(path), "-f", "%be%am"]) == 0
    be, am = capsys.readouterr().out.strip().split(",")
    assert float(be) == pytest.approx(online.capacity / 1e6, rel=0.005) and am == "2"


def test_offline_on_values_with_locos_doubling(tmp_path, capsys):
    """A dump written by loco itself holds pairs at twice the rate (its L for L - 1): re-analysed
    as values, the estimate is what they say, not a silently 'fixed' number."""
    meas = measured(50e6)
    path = tmp_path / "loco.csv"
    r1, r2 = meas.of(A.PHASE1) * 2 / 1e6, meas.of(A.PHASE2) * 32 / 31 / 1e6
    path.write_text("\n".join([str(len(r1)), *[f"{v:.4f},1.0" for v in r1], str(len(r2)),
                               *[f"{v:.4f},1.0" for v in r2]]) + "\n")
    assert loco.main(["-r", str(path), "-f", "%be"]) == 0
    assert float(capsys.readouterr().out) == pytest.approx(100, rel=0.02)


@pytest.mark.parametrize("text, where", [
    ("", "line 1: missing the P1 count"), ("x\n", "line 1: P1 count"), ("2\n1.0,2.0\n", "line 3: P1 has 2"),
    ("1\n1.0;2.0\n0\n", "line 2: expected"), ("1\n-3,2\n0\n", "line 2: bandwidth"), ("1\n1,2\n", "line 3: missing"),
    ("1\nnan,2\n0\n", "line 2: bandwidth"),
])
def test_bad_csv_names_the_line(tmp_path, text, where):
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(UsageError, match=where):
        loco.read_csv(path)


def test_usage_errors_are_one_line(capsys, tmp_path):
    assert loco.main([]) == 2
    assert "OOPS" in capsys.readouterr().err
    assert loco.main(["-h", "192.0.2.1", "-r", str(tmp_path / "x")]) == 2
    assert loco.main(["-r", str(tmp_path / "missing.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 2 and "cannot mix" not in err and "cannot read" in err
    assert loco.main(["-V"]) == 0 and "Loco v0.4.0" in capsys.readouterr().err


def test_too_few_values_is_unknown(tmp_path, capsys):
    path = tmp_path / "few.csv"
    path.write_text("2\n10,1\n11,1\n1\n9,1\n")
    assert loco.main(["-r", str(path)]) == 0
    assert capsys.readouterr().out.strip().split(",")[:3] == ["-1.0000", "0", "UNKNOWN"]


def test_assessment_codes_and_preliminary_statistics():
    from scipy import stats
    meas = measured()
    e = A.estimate(meas, MAX)
    vals = loco.values(e, meas)
    assert loco.assessment(e) == 1 and vals["AM"] == "MODE" and np.isnan(vals["lt"])
    pre = meas.of(A.PRELIM)
    assert vals["pm"] == pytest.approx(stats.trim_mean(np.repeat(pre, 4), 0.25) / 1e6)
    assert vals["ps"] == pytest.approx(np.std(pre) / 1e6)


def test_help_shows_the_default_format():
    """argparse %-formats help texts: the default format's % signs once crashed --help."""
    assert "(default %be%am%AM%bl%bu%bw%pd%ul)" in " ".join(loco.build_parser().format_help().split())
