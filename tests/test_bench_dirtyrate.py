"""``dirtysim bench dirtyrate``: the estimator matrix runs end to end and writes its tables."""

from __future__ import annotations

from click.testing import CliRunner

from dirtysim.cli import main


def test_bench_dirtyrate_quick_writes_the_matrix(tmp_path):
    res = CliRunner().invoke(main, ["bench", "dirtyrate", "--quick", "--workers", "1", "-o", str(tmp_path)])
    assert res.exit_code == 0, res.output
    rows = (tmp_path / "rows.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 3 * 5  # header + 2 workloads x 3 seeds x 5 modes
    summary = (tmp_path / "summary.md").read_text()
    assert "| identical-rewrites | page-sampling | 1000 | 3 |" in summary
    assert (tmp_path / "estimates.png").read_bytes()[:4] == b"\x89PNG"
