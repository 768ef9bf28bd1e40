"""Wall time of `python src/run.py data=imdb` on a fresh artifact cache, then on the warm one.

    python benchmarks/imdb_pipeline.py [--json FILE] [--cache DIR] [-- extra run.py overrides]

The first run builds every IMDb artifact (gold reward, tokenizer, SFT policy, pairs) and trains; the
second finds them cached and only trains and evaluates. Prints both wall times, each artifact's own
build time (from the metadata the task writes beside it), and the run's eval/* metrics. Targets
(issue 3): first run under 10 minutes on two CPU cores, later runs under 3 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = {  # cache kind -> (metadata file, its seconds field)
    "imdb_reward": ("meta.json", "reward_seconds"),
    "imdb_sft": ("imdb_meta.json", "sft_seconds"),
    "imdb_pairs": ("meta.json", "pairs_seconds"),
}


def run_once(cache: Path, out: Path, extra: list[str]) -> tuple[float, dict]:
    env = {**os.environ, "PREFOPT_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline"}
    start = time.time()
    proc = subprocess.run([sys.executable, str(ROOT / "src" / "run.py"), "data=imdb", "logger=none",
                           f"hydra.run.dir={out}", *extra], env=env, cwd=ROOT, capture_output=True, text=True)
    wall = time.time() - start
    if proc.returncode != 0:
        sys.exit(f"run failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return wall, json.loads((out / "results.json").read_text())


def stage_seconds(cache: Path) -> dict[str, float]:
    out = {}
    for kind, (name, field) in STAGES.items():
        for meta in (cache / kind).glob(f"*/{name}"):
            out[kind] = json.loads(meta.read_text()).get(field)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the numbers here")
    parser.add_argument("--cache", help="artifact cache to use (default: a fresh temporary folder)")
    parser.add_argument("overrides", nargs="*", help="extra run.py overrides (after --)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="imdb-bench-") as tmp:
        cache = Path(args.cache) if args.cache else Path(tmp) / "cache"
        first, _ = run_once(cache, Path(tmp) / "first", args.overrides)
        print(f"first run (building): {first:.0f} s", flush=True)
        second, results = run_once(cache, Path(tmp) / "second", args.overrides)
        print(f"second run (cached):  {second:.0f} s")
        stages = stage_seconds(cache)
        for kind, seconds in stages.items():
            print(f"  {kind:<12} built in {seconds:.0f} s")
        metrics = {k: v for k, v in results["metrics"].items() if k.startswith("eval/")}
        for key, value in metrics.items():
            print(f"  {key:<26} {value:.4f}")
        row = {"first_run_s": first, "cached_run_s": second, "stages_s": stages, "metrics": metrics,
               "threads": results["config"].get("threads"), "overrides": args.overrides}
        if args.json:
            Path(args.json).write_text(json.dumps(row, indent=1))


if __name__ == "__main__":
    main()
