"""Render docs/reliability.md's table from the rows the reliability tests record (tests/conftest.py `record`).

    SSLSCALE_RELIABILITY_REPORT=runs/reliability.jsonl pytest tests/... ; python benchmarks/reliability_table.py runs/reliability.jsonl

Replaces the text between the two TABLE markers in docs/reliability.md, so the table is always a test run's.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

DOC = Path(__file__).resolve().parent.parent / "docs" / "reliability.md"
BEGIN, END = "<!-- TABLE BEGIN -->", "<!-- TABLE END -->"
COLUMNS = [("fault", "Fault"), ("injected", "What was injected"), ("outcome", "What happened"),
           ("lost", "Samples lost"), ("repeated", "Samples repeated"), ("recover_s", "Time to recover (s)"),
           ("test", "Test")]


def table(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(title for _, title in COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in rows:
        cells = [f"`{row[key]}`" if key == "test" else str(row.get(key, "")) for key, _ in COLUMNS]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def main(report: str) -> None:
    rows = [json.loads(line) for line in Path(report).read_text().splitlines() if line.strip()]
    doc = DOC.read_text()
    head, rest = doc.split(BEGIN)
    _, tail = rest.split(END)
    stamp = f"Recorded by the tests on {time.strftime('%Y-%m-%d')} (2-core CPU machine, debug recipe, 2 workers)."
    DOC.write_text(f"{head}{BEGIN}\n{stamp}\n\n{table(rows)}\n{END}{tail}")
    print(f"{len(rows)} rows -> {DOC}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/reliability.jsonl")
