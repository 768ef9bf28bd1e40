"""The summary of scripts/sweep_side_by_side.sh: each arm's wall time, the speed-ups against the old
checkout (ratio of the arms' mean walls, and per repetition), and whether every run's oracle reward is
the same in every arm (runs matched by loss, β, lr and seed from results.json). Exit 1 when an arm
misses a run, a run failed, or a reward differs. `--grid` prints the study's main grid as plain
overrides, one loss per line, read from conf/sweep/beta_sensitivity.yaml (its sweeper's positions).

    .venv/bin/python scripts/sweep_side_by_side.py /tmp/side_by_side
    .venv/bin/python scripts/sweep_side_by_side.py --grid    # dpo loss.beta=0.1,0.3,... optim.lr=...
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path
from statistics import mean

KIND_ORDER = ("old", "new", "pack")
STUDY = Path(__file__).resolve().parents[1] / "conf" / "sweep" / "beta_sensitivity.yaml"


def main_grid(study: Path = STUDY) -> dict[str, str]:
    """{loss: "loss.beta=... optim.lr=..."}: each swept loss's values at the swept grid positions."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from prefopt.config.study_file import load_study_file

    node, _ = load_study_file(study)
    params = node.hydra.sweeper.params
    positions = {key: str(params[f"sweep.{key}_step"]).split(",") for key in ("beta", "lr")}
    grid = {}
    for loss in str(params.loss).split(","):
        values = {key: ",".join(str(node.sweep.grid[loss][key][at]) for at in steps) for key, steps in positions.items()}
        grid[loss] = f"loss.beta={values['beta']} optim.lr={values['lr']}"
    return grid


def walls(out: Path) -> dict[str, dict[int, float]]:
    """{kind: {repetition: seconds}} from walls.txt lines `<kind>-<rep> <seconds>`."""
    table: dict[str, dict[int, float]] = defaultdict(dict)
    for line in (out / "walls.txt").read_text().splitlines():
        name, seconds = line.split()
        kind, rep = name.rsplit("-", 1)
        table[kind][int(rep)] = float(seconds)
    return table


def rewards(arm: Path) -> tuple[dict[tuple, float], list[str]]:
    """{(loss, beta, lr, seed): eval/oracle_reward} of an arm's completed runs, and the failed runs' folders."""
    found, failed = {}, []
    for path in sorted(arm.glob("*/*/results.json")):
        result = json.loads(path.read_text())
        if result.get("status") != "completed":
            failed.append(str(path.parent))
            continue
        config = result["config"]
        key = (path.parent.parent.name, float(config["loss"]["beta"]), float(config["optim"]["lr"]), result["seed"])
        found[key] = result["metrics"]["eval/oracle_reward"]
    return found, failed


def speedups(table: dict[str, dict[int, float]]) -> list[str]:
    lines = [f"{kind}: mean {mean(reps.values()):.1f} s ({', '.join(f'{s:.1f}' for _, s in sorted(reps.items()))})"
             for kind, reps in sorted(table.items(), key=lambda kv: KIND_ORDER.index(kv[0]))]
    old = table.get("old", {})
    for kind in ("new", "pack"):
        if old and table.get(kind):
            per_rep = ", ".join(f"{old[r] / s:.2f}" for r, s in sorted(table[kind].items()) if r in old)
            lines.append(f"old / {kind}: {mean(old.values()) / mean(table[kind].values()):.2f}x (per repetition {per_rep})")
    return lines


def reward_check(out: Path, arms: list[str]) -> tuple[list[str], bool]:
    """Lines saying how many runs each arm has and where rewards differ; True when all agree."""
    per_arm = {arm: rewards(out / arm) for arm in arms}
    reference_arm = arms[0]
    reference = per_arm[reference_arm][0]
    lines, ok = [], bool(reference)
    for arm, (found, failed) in per_arm.items():
        differ = [key for key in reference if found.get(key) != reference[key]]
        lines.append(f"{arm}: {len(found)} runs, {len(failed)} failed, "
                     f"{len(differ)} oracle rewards differ from {reference_arm}" + (f" {differ[:3]}" if differ else ""))
        ok = ok and not failed and not differ and set(found) == set(reference)
    return lines, ok


def main(out: Path) -> int:
    table = walls(out)
    arms = [f"{kind}-{rep}" for kind in KIND_ORDER for rep in sorted(table.get(kind, {}))]
    lines, ok = reward_check(out, arms)
    print("\n".join(speedups(table) + lines))
    print("every run's oracle reward is the same in every arm" if ok else "ARMS DISAGREE (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    if sys.argv[1:] == ["--grid"]:
        print("\n".join(f"{loss} {overrides}" for loss, overrides in main_grid().items()))
    else:
        sys.exit(main(Path(sys.argv[1])))
