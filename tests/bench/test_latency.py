"""The latency benchmark runs end to end on the micro model (two cases per row) and writes its documented rows."""

import json

from bench.latency import COLUMNS


def test_latency_benchmark_writes_rows(cli, micro_export, tmp_path):
    out = tmp_path / "latency.json"
    result = cli("-m", "bench.latency", "--model-dir", str(micro_export), "--cases", "2", "--rows", "hf:fp32",
                 "llama:q4_k_m", "--out", str(out), timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    rows = json.loads(out.read_text())
    assert [(r["backend"], r["precision"]) for r in rows] == [("hf", "fp32"), ("llama", "q4_k_m")]
    for row in rows:
        assert set(COLUMNS) <= row.keys() and row["cases"] == 2
        assert 0 < row["first_step_s"] <= row["prescription_s"] and row["reference_llama_s"] > 0
        assert row["revision_s"] > 0  # the micro model revises drafts (step format 2)
        assert row["peak_rss_mb"] > 50
    assert "prescription_s" in result.stdout  # the printed table
