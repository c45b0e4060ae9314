"""The soak in `make test`: five minutes of every probe kind in the lab under the fault cycle
(tests/soak/soak.py; `make soak` runs the two-hour version). Fails on any unexplained
interval, a fault without its record, a leak or a zombie."""
import json
import os

import pytest

from tests.soak import soak


@pytest.mark.lab
@pytest.mark.slow
def test_five_minute_soak_accounts_for_every_interval(tmp_path):
    duration = soak.parse_duration(os.environ.get("SOAK", "5m"))
    v = soak.run(duration, sample=20.0, slope_limit=1.0, keep=tmp_path / "soak")
    (tmp_path / "verdict.json").write_text(json.dumps(v, indent=2))
    print(json.dumps({k: v[k] for k in ("duration_s", "probes", "faults", "leaks")}, indent=1))
    assert not v["failures"], "\n".join(v["failures"])
    assert all(p["received"] > 0.5 * p["expected"] for p in v["probes"].values()), v["probes"]
