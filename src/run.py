"""The Hydra entry point: compose conf/ (loss, model, data, trainer, logger, sweep), run, record.

    python src/run.py                                 # default: loss=rmipo model=tiny data=sort
    python src/run.py loss=dpo loss.beta=0.05
    python src/run.py -m loss=dpo,ipo,simpo,rmipo seed=0,1

Each job writes results.json and model/ into its Hydra output folder (see README.md).
"""

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `prefopt` even without `pip install -e .`
os.environ.setdefault("WANDB_MODE", "offline")

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig):
    from prefopt.runner import run

    metrics = run(cfg)
    return (metrics or {}).get(cfg.get("objective", "eval/oracle_reward"))


if __name__ == "__main__":
    main()
