"""benchmarks/run.py: the combined summary and comparison plots, built from the committed default-size results (the
benchmark scripts themselves are smoke-tested at --quick size in tests/<pillar>/test_benchmark_quick.py)."""

import json
import shutil

import pytest

from benchmarks import run

NAMES = run.BENCHMARKS


def test_summary_from_committed_results(tmp_path):
    for n in NAMES:
        shutil.copy(run.RESULTS_DIR / f"{n}.json", tmp_path / f"{n}.json")
    results = run.main(["--summary-only", "--out", str(tmp_path)])
    assert set(results) == set(NAMES)
    md = (tmp_path / "SUMMARY.md").read_text()
    for n in NAMES:
        payload = json.loads((tmp_path / f"{n}.json").read_text())
        assert f"## {n}" in md
        assert payload["machine"]["versions"]["jax"] in md
        for title, rows in payload["tables"].items():
            assert f"### {title}" in md
            assert all(str(k) in md for k in rows[0])
        png = tmp_path / f"{n}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000


def test_runner_rejects_unknown_and_missing(tmp_path):
    with pytest.raises(SystemExit, match="unknown benchmark"):
        run.main(["--only", "nope", "--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="does not exist"):
        run.main(["--summary-only", "--only", "nsm", "--out", str(tmp_path)])
