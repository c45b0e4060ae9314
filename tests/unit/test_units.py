"""Unit parsing and formatting."""
import pytest

from netprobe import units


@pytest.mark.parametrize("text,bps", [
    ("100M", 100e6), ("9.5G", 9.5e9), ("1.2Gbit/s", 1.2e9), ("500k", 500e3),
    ("64kbit/s", 64e3),
    ("10 Mbit", 10e6), (1000, 1000.0), ("1e3M", 1e9), (".5G", 0.5e9),
])
def test_parse_rate(text, bps):
    assert units.parse_rate(text) == pytest.approx(bps)


@pytest.mark.parametrize("bad", ["10 Gbps", "fast", "", "1.2.3M", "-5M", True, float("inf"), None, "5 MB",
                                 "64kbps", "1GBps"])
def test_parse_rate_rejects(bad):
    with pytest.raises(ValueError, match="is not a rate"):
        units.parse_rate(bad)


@pytest.mark.parametrize("text,s", [
    ("100ms", 0.1), ("15s", 15), ("2m", 120), ("250us", 250e-6), ("1h", 3600), (3, 3.0), ("1.5s", 1.5),
    ("500ns", 5e-7), ("2min", 120),
])
def test_parse_duration(text, s):
    assert units.parse_duration(text) == pytest.approx(s)


@pytest.mark.parametrize("bad", ["soon", "10", "5 parsecs", "-1s", False, "1 s s"])
def test_parse_duration_rejects(bad):
    with pytest.raises(ValueError, match="is not a duration"):
        units.parse_duration(bad)


@pytest.mark.parametrize("text,n", [("1400", 1400), ("64K", 65536), ("1M", 1 << 20), (9000, 9000), ("64KiB", 65536)])
def test_parse_size(text, n):
    assert units.parse_size(text) == n


@pytest.mark.parametrize("bad", ["1.5K", "lots", "64 mb", True, 3.0])
def test_parse_size_rejects(bad):
    with pytest.raises(ValueError, match="is not a size"):
        units.parse_size(bad)


@pytest.mark.parametrize("fn,value,text", [
    (units.format_rate, 812.4e6, "812.4Mbit/s"), (units.format_rate, 9.5e9, "9.5Gbit/s"),
    (units.format_rate, 500, "500bit/s"), (units.format_duration, 15, "15s"),
    (units.format_duration, 0.0123, "12.3ms"), (units.format_duration, 560e-6, "560us"),
    (units.format_duration, 0, "0s"), (units.format_size, 1500, "1.5kB"),
])
def test_format(fn, value, text):
    assert fn(value) == text


@pytest.mark.parametrize("bps", [1.0, 999.9, 1e3, 12345.678, 9.5e9, 1e12])
def test_rate_round_trips_within_display_precision(bps):
    assert units.parse_rate(units.format_rate(bps).replace("bit/s", "")) == pytest.approx(bps, rel=5e-4)
