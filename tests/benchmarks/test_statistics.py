"""The bootstrap benchmark writes its side-by-side table (at toy size)."""

from ptxseg.benchmarks.statistics import run_stats_benchmark


def test_benchmark_table_compares_vectorised_and_plain(tmp_path):
    rows = run_stats_benchmark(tmp_path, n_images=200, resamples=100, plain_resamples=5)
    assert [r["resamples"] for r in rows] == [100, 100]
    assert rows[1]["speed_up"] == 1.0 and rows[0]["seconds"] >= 0
    text = (tmp_path / "statistics-benchmark.md").read_text()
    assert "vectorised patient bootstrap" in text and "plain loop" in text
    assert (tmp_path / "statistics-benchmark.csv").is_file()
