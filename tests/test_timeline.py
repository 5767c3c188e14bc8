"""timeline.phases: marks from the driver and rank 0 become start-up and wind-down phases."""
from sslscale.timeline import STARTUP, WINDDOWN, Marks, phases


def test_phases_split_startup_and_winddown_and_skip_missing_marks():
    names = [a for _, a, _ in STARTUP] + [STARTUP[-1][2]] + [a for _, a, _ in WINDDOWN] + [WINDDOWN[-1][2]]
    marks = {name: float(i) for i, name in enumerate(names)}  # each phase lasts 1 s
    out = phases(marks)
    assert out["startup/total_s"] == len(STARTUP) and out["winddown/total_s"] == len(WINDDOWN)
    assert all(out[f"startup/{name}_s"] == 1.0 for name, _, _ in STARTUP)
    del marks["imported"]  # e.g. a worker that never reported its marks
    out = phases(marks)
    assert "startup/imports_s" not in out and "startup/worker_group_s" not in out and "startup/total_s" in out


def test_the_first_mark_of_a_name_wins():
    m = Marks()
    m.mark("start")
    first = m["start"]
    m.mark("start")
    assert m["start"] == first
