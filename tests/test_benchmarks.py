"""Benchmarks are not tests, but they must not rot: `make test` runs each script at a tiny size through the same
runner `make benchmark` uses, and checks that every line it reports is a positive number. train_throughput.py (Ray
Train runs, minutes) is left out; gpu_check.py has its own test (tests/test_gpu_check.py)."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_every_benchmark_runs_at_a_tiny_size_and_reports_positive_numbers(tmp_path, data_root):
    done = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "report.py"), "--quick", "--out",
                           str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "SSLSCALE_DATA": data_root})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "benchmarks.json").read_text())
    assert {"ingest", "views224", "engine", "positions"} <= set(results)
    lines = [x for r in results.values() if isinstance(r, dict) for x in r.get("lines", [])]
    assert {x["section"] for x in lines} >= {"ingest", "views224", "engine"}
    assert all(x["ours"] > 0 and (x["plain"] is None or x["plain"] > 0) for x in lines)
    assert "| what | sslscale | plain / baseline |" in (tmp_path / "benchmarks.md").read_text()
