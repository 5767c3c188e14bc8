"""Benchmarks are not tests, but they must not rot: `make test-long` runs each script at a tiny size through the same
runner `make benchmark` uses, and checks that every line it reports is a positive number with its repeats and
spread, and that a partial run writes files of its own. train_throughput.py (Ray Train runs, minutes) is left out;
gpu_check.py has its own test (tests/test_gpu_check.py). How a line reads (benchmarks/common.py) is checked
directly."""
import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPORT = os.path.join(ROOT, "benchmarks", "report.py")
SPREAD = re.compile(r"\| [\d,.]+ \([\d,.]+-[\d,.]+\) \|")


def _common():
    spec = importlib.util.spec_from_file_location("benchmarks_common", os.path.join(ROOT, "benchmarks", "common.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _report(out, data_root, *args: str) -> None:
    done = subprocess.run([sys.executable, REPORT, "--quick", "--out", str(out), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env={**os.environ, "SSLSCALE_DATA": data_root})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


@pytest.mark.long  # ~30 s: a Ray instance per ingest repeat, DeepSpeed engines
def test_every_benchmark_runs_at_a_tiny_size_and_reports_positive_numbers(tmp_path, data_root):
    _report(tmp_path, data_root)
    results = json.loads((tmp_path / "quick.json").read_text())
    assert results["run"]["kind"] == "quick"
    assert {"ingest", "views224", "engine", "positions"} <= set(results)
    lines = [x for r in results.values() if isinstance(r, dict) for x in r.get("lines", [])]
    assert {x["section"] for x in lines} >= {"ingest", "views224", "engine"}
    for x in lines:  # every repeat's value is kept, and each side's median lies within them
        for side in [x["ours"]] + ([x["plain"]] if x["plain"] else []):
            assert side["repeats"] and all(v > 0 for v in side["repeats"])
            assert side["min"] <= side["median"] <= side["max"]
        if x["ratio"]:
            assert len(x["ratio"]["repeats"]) == len(x["ours"]["repeats"]) == len(x["plain"]["repeats"])
    assert all(len(x["ours"]["repeats"]) == 2 for x in lines if x["section"] in ("ingest", "engine"))
    md = (tmp_path / "quick.md").read_text()
    assert "| what | sslscale | plain / baseline | unit | ratio | repeats | how |" in md
    assert SPREAD.search(md), md  # 2 repeats: median (min-max)
    assert not (tmp_path / "benchmarks.json").exists()


@pytest.mark.slow
def test_a_partial_run_writes_dated_files_of_its_own_never_the_full_run_s(tmp_path, data_root):
    _report(tmp_path, data_root, "--only", "views224")
    written = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    assert len(written) == 2 and all(re.fullmatch(r"partial-\d{8}-\d{6}\.(json|md)", n) for n in written), written
    md = (tmp_path / written[1]).read_text()
    assert md.startswith("# Partial benchmark run: views224") and "of views224 only" in md
    results = json.loads((tmp_path / written[0]).read_text())
    assert results["run"]["kind"] == "partial" and results["run"]["scripts"] == ["views224"]
    assert set(results) == {"machine", "run", "views224"}


def test_a_line_shows_median_and_spread_and_says_when_the_ratio_cannot_tell_the_sides_apart():
    common = _common()
    same = common.cells(common.line("s", "same", [100, 103, 98], [99, 100, 101], "samples/s"))
    assert same["ratio"] == "no measurable difference: 1.01 (0.97-1.03)"
    assert same["ours"] == "100 (98-103)" and same["plain"] == "100 (99-101)" and same["repeats"] == "3"
    x = common.line("s", "slower", [590, 607, 620], [680, 675, 667], "samples/s")
    assert x["ratio"]["repeats"] == pytest.approx([590 / 680, 607 / 675, 620 / 667])
    assert x["ratio"]["median"] == pytest.approx(607 / 675) and x["ratio"]["measurable"] is True
    assert common.cells(x)["ours"] == "607 (590-620)" and common.cells(x)["ratio"] == "0.90 (0.87-0.93)"
    touching = common.line("s", "reaches 1.00 when rounded", [83, 91, 99.6], [100, 100, 100], "samples/s")
    assert common.cells(touching)["ratio"] == "no measurable difference: 0.91 (0.83-1.00)"
    faster = common.line("s", "seconds", [8.0, 9.0, 10.0], [16.0, 16.0, 16.0], "s", lower_is_better=True)
    assert common.cells(faster)["ratio"] == "1.78 (1.60-2.00)"  # plain / ours: above 1, sslscale ahead
    single = common.cells(common.line("s", "one repeat", [3.12], [3.30], "steps/s"))
    assert single == {"ours": "3.12", "plain": "3.30", "ratio": "0.95", "repeats": "1"}
    startup = common.line("start-up", "total", [16.0, 15.5, 17.0], [55.4], "s", paired=False)
    assert startup["ratio"] is None and common.cells(startup)["repeats"] == "3 / 1"
    with pytest.raises(ValueError):
        common.line("s", "unpaired", [1.0, 2.0], [1.0], "s")
