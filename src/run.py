"""The Hydra entry point: compose conf/ (loss, model, data, trainer, logger, sweep), run, record.

    python src/run.py                                 # default: loss=rmipo model=tiny data=imdb (conf/train.yaml)
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

from prefopt.config.launcher import register as register_launcher_resolvers  # noqa: E402

register_launcher_resolvers()  # conf/hydra/launcher/submitit_slurm.yaml reads trainer.devices through them


CONF_DIR = Path(__file__).resolve().parents[1] / "conf"


@hydra.main(config_path="../conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig):
    from prefopt.run.runner import run

    metrics = run(cfg)
    return (metrics or {}).get(cfg.get("objective", "eval/oracle_reward"))


def precheck() -> None:
    """Fail in milliseconds, naming the valid keys, on `loss.<key>=` overrides the loss lacks, overrides
    of keys no plain group has, group options that do not exist and values the schema refuses (all of
    them, with the rest of the config's problems, in one message: config/validate.py `precheck_problems`),
    and on an output folder that cannot be written."""
    from prefopt.config.components import ConfigError, raise_problems
    from prefopt.config.launcher import precheck_slurm
    from prefopt.config.preflight import check_output_argv
    from prefopt.config.validate import precheck_problems
    from prefopt.log import PLAIN, get_logger

    try:  # the loss's keys: the chosen loss's constructor (default: conf/train.yaml's); the rest: config/schema.py
        argv = sys.argv[1:]
        raise_problems(precheck_problems(argv, CONF_DIR))
        precheck_slurm(sys.argv[1:], CONF_DIR)
    except ConfigError as err:
        get_logger().error(f"error: {err}", extra=PLAIN)
        raise SystemExit(1) from None
    problem = check_output_argv(sys.argv[1:])  # before Hydra, whose own failure here is a traceback
    if problem:
        get_logger().error(f"error: {problem}", extra=PLAIN)
        raise SystemExit(1)


if __name__ == "__main__":
    precheck()
    main()
    from prefopt.run.sweep_outcome import exit_code

    sys.exit(exit_code())  # a multirun in which a job failed exits 1, after all its jobs ran
