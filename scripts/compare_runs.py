"""Compares the metrics of two folders of runs (as scripts/same_numbers.sh writes them), run by run:
every metric except timing (`perf/*`) must be equal to the last digit. Exit 1 if any differs.

    .venv/bin/python scripts/compare_runs.py /tmp/old /tmp/new
"""

import json
import sys
from pathlib import Path


def metrics(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text())["metrics"]


def main(old: Path, new: Path) -> int:
    differing = 0
    for run in sorted(p.name for p in old.iterdir() if (p / "results.json").exists()):
        if not (new / run / "results.json").exists():
            print(f"{run}: missing in {new}")
            differing += 1
            continue
        a, b = metrics(old / run), metrics(new / run)
        keys = sorted(k for k in set(a) | set(b) if not k.startswith("perf/"))
        diff = [(k, a.get(k), b.get(k)) for k in keys if a.get(k) != b.get(k)]
        print(f"{run}: {len(keys)} metrics " + ("identical" if not diff else f"{len(diff)} differ: {diff[:4]}"))
        differing += bool(diff)
    return 1 if differing else 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
