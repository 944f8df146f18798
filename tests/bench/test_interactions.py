"""The alert-load benchmark runs end to end on the shipped model (a few cases) and writes one row per medication
list, the screened prescriptions never holding a major interaction."""

import json

from bench.interactions import MEDICATION_LISTS


def test_alert_load_benchmark_writes_a_row_per_medication_list(cli, tmp_path):
    out = tmp_path / "interactions.json"
    result = cli("-m", "bench.interactions", "--limit", "5", "--out", str(out), timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert [r["drugs"] for r in rows] == list(MEDICATION_LISTS) and all(r["n"] == 5 for r in rows)
    for row in rows:
        assert row["screened"]["severe"] == 0.0  # the app's screen never adds a major interaction
        assert all(0 <= share <= 1 for share in [*row["screened"].values(), *row["unscreened"].values()])
        assert row["Δ P@5 CI"][0] <= row["Δ P@5"] <= row["Δ P@5 CI"][1]
    none = rows[0]
    assert none["unscreened"] == none["screened"] == {"severe": 0.0, "warning": 0.0, "info": 0.0}
