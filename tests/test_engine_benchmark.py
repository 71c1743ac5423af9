"""benchmarks.engine runs end to end in its quick form and reports what it measured."""

from benchmarks.engine import main


def test_engine_benchmark_quick_reports_every_engine_against_the_naive_reference(capsys):
    result = main(["--quick", "--no-flower", "--no-vgg", "--threads", "1"])
    rows = {r["engine"]: r for r in result["rows"]}
    assert set(rows) == {"naive", "loop", "stacked"}
    assert all(r["models"] == 32 and r["gflops"] > 0 for r in rows.values())  # 2^5 coalitions each
    assert rows["naive"]["max_abs_diff"] == 0.0
    assert rows["stacked"]["max_abs_diff"] < 1e-5 and rows["loop"]["max_abs_diff"] < 1e-5
    assert result["peak"] == max(result["peaks"]) and len(result["peaks"]) == 2
    out = capsys.readouterr().out
    assert "stacked" in out and "% peak" in out and "matmul peak" in out
