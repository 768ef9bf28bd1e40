"""Write the sort task's preference pairs (built once and cached) to a jsonl file any model can train on.

    python scripts/gpu_check_pairs.py OUT.jsonl [hydra overrides of data=sort, e.g. data.source.n_sft=3000]

The destination is the only output the caller uses (scripts/gpu_check.sh); everything printed is log.
Exercised by `pytest tests/test_gpu_check.py`.
"""

import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def main(dest: str, overrides: list[str]) -> None:
    from hydra import compose, initialize_config_dir

    from prefopt.config.components import build_component
    from prefopt.models.choose import choose_start

    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=["data=sort", "model=tiny", *overrides])
    root = Path(os.environ.get("PREFOPT_CACHE", ROOT / ".cache" / "prefopt")).resolve()
    source = build_component(cfg.data.source, "data.source")
    artifacts = source.build(choose_start(cfg.model, source), cfg.model, root)
    pairs = root / "sort_pairs" / artifacts.info["sort/pairs_key"] / "pairs.jsonl"
    Path(dest).parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(pairs, dest)
    print(f"pairs: {artifacts.info['sort/n_pairs']} from {pairs} -> {dest}")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2:])
