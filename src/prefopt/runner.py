"""One training run, start to finish: check config, build data and policy, fit, evaluate, save.

`src/run.py` (the Hydra app) calls `run(cfg)` for each job. A user's mistake (config, data, model
location) is reported as one message and recorded in results.json as `failed`; in a multirun the other
jobs go on. Exercised by `python src/run.py` and `python src/run.py -m loss=dpo,rmipo`.
"""

from __future__ import annotations

import gc
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from prefopt.config import ConfigError, build_component
from prefopt.loggers import sweep_group
from prefopt.results import read_results, write_results
from prefopt.validate import check_required, validate_config


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean the user must change something: reported without a traceback."""
    from prefopt.data.errors import DataError
    from prefopt.errors import CacheError, TrainingDiverged
    from prefopt.models import ModelLoadError

    return (ConfigError, DataError, ModelLoadError, TrainingDiverged, CacheError)


def _hydra_context() -> tuple[Path, bool, str]:
    """(output dir, is multirun, sweep group name) of the current Hydra job."""
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    group = sweep_group(hc.sweep.dir if multirun else None, hc.runtime.choices.get("sweep"))
    return Path(hc.runtime.output_dir), multirun, group


def global_rank() -> int:
    """This process's rank in a data-parallel run (0 when there is none)."""
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", os.environ.get("LOCAL_RANK", "0"))))


def _scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Scalar metrics with a `/` in their name (`train_loss` and the like are progress-bar copies)."""
    return {k: float(v) for k, v in metrics.items()
            if "/" in k and (hasattr(v, "item") or isinstance(v, (int, float)))}


def print_summary(metrics: dict[str, float], output_dir: Path) -> None:
    keys = [k for k in metrics if k.startswith(("eval/", "val/loss", "val/rewards/accuracies", "train/loss"))]
    width = max((len(k) for k in keys), default=10)
    print("\n" + "-" * (width + 14))
    for key in keys:
        print(f"{key:<{width}}  {metrics[key]:>10.4g}")
    print("-" * (width + 14))
    print(f"results: {output_dir / 'results.json'}\npolicy:  {output_dir / 'model'}\n")


def print_data_summary(source_drops: dict | None, stats: dict[str, Any]) -> None:
    """One line: pairs per split and every drop, by reason (the same counts go into results.json)."""
    drops: dict[str, int] = {}
    for split_drops in (source_drops or {}).values():
        for reason, n in split_drops.items():
            drops[reason.replace("_", " ")] = drops.get(reason.replace("_", " "), 0) + n
    drops["emptied by truncation"] = stats.get("train/dropped_truncated", 0) + stats.get("eval/dropped_truncated", 0)
    drops["prompt too long"] = stats.get("train/dropped_prompt_too_long", 0) + stats.get("eval/dropped_prompt_too_long", 0)
    dropped = ", ".join(f"{reason} {n}" for reason, n in drops.items() if n) or "none"
    print(f"[prefopt] data: {stats.get('train/pairs', 0)} train pairs, {stats.get('eval/pairs', 0)} eval pairs; "
          f"dropped: {dropped}")


def train_and_evaluate(cfg: DictConfig, output_dir: Path, group: str, state: dict[str, Any]) -> dict[str, float]:
    """The run itself; fills `state` (loggers, info) so the caller can clean up and record."""
    import lightning as L

    from prefopt.data.datamodule import PreferenceDataModule
    from prefopt.data.layout import detect_layout
    from prefopt.loggers import hyperparameters, log_summary, make_loggers, run_identity, wandb_identity
    from prefopt.models import load_policy
    from prefopt.module import PreferenceModule, frozen_copy
    from prefopt.logp_cache import LogpCaches
    from prefopt.gather import full_policy_state, is_sharded, rebuild_policy
    from prefopt.model_setup import is_lora, prepare_for_training, save_policy
    from prefopt.perf import ThroughputMonitor
    from prefopt.progress import quiet_lightning
    from prefopt.resume import RunRecord
    from prefopt.trainer_factory import build_trainer
    from prefopt import memo
    from prefopt.disk import check_disk_space
    from prefopt.hardware import setup_line

    quiet_lightning()

    validate_config(cfg)
    torch.set_num_threads(int(cfg.threads))
    loss = build_component(cfg.loss, "loss")  # before any model loads: a bad key costs seconds
    source = build_component(cfg.data.source, "data.source")
    L.seed_everything(cfg.seed, workers=True, verbose=False)

    cache_root = Path(cfg.paths.cache_dir)
    artifacts = memo.task_artifacts(source, cfg.data.source, cfg.model, cache_root)  # once per sweep worker
    state["info"].update(artifacts.info)

    def load_start() -> tuple[torch.nn.Module, Any]:  # the untrained policy: a copy of the one loaded first
        return memo.starting_policy(
            lambda: load_policy(cfg.model, cache_root, artifacts.policy, artifacts.corpus, cfg.seed),
            cfg.model, cfg.data.source, artifacts.policy, cache_root, cfg.seed)

    policy, tokenizer = load_start()
    policy = prepare_for_training(policy, cfg.model)
    data = PreferenceDataModule(
        artifacts.train_rows,
        artifacts.eval_rows,
        tokenizer,
        max_length=cfg.data.max_length,
        max_prompt_length=cfg.data.max_prompt_length,
        batch_size=cfg.data.batch_size,
        eval_batch_size=cfg.data.eval_batch_size,
        seed=cfg.seed,
        marginal_prefix=artifacts.marginal_prefix,
        strict=cfg.data.get("strict", False),
        append_eos=artifacts.responses_end_with_eos,
        group_by_length=cfg.data.get("group_by_length", False),
        max_tokens_per_batch=cfg.data.get("max_tokens_per_batch"),
    )
    data.setup()  # tokenize now: bad rows fail before the trainer starts, drops are reported
    state["info"]["data"] = data.stats
    state["info"]["memo"] = dict(memo.stats)  # what this process reused from earlier runs (prefopt/memo.py)
    print_data_summary(state["info"].get("drops"), data.stats)
    state["info"]["data_layout"] = detect_layout(artifacts.info, artifacts.train_rows)
    print(f"[prefopt] data layout: {state['info']['data_layout']}")
    module = PreferenceModule(policy, loss, share_prompt=cfg.get("share_prompt", "auto"),
                              **OmegaConf.to_container(cfg.optim, resolve=True))

    name, tags = run_identity(cfg, loss.name, cfg.data.name, cfg.method)
    state["loggers"] = loggers = make_loggers(cfg, output_dir, name, group, tags)
    if wandb_identity(loggers):
        state["info"]["wandb"] = wandb_identity(loggers)
    run_record = RunRecord(cfg, data, tokenizer, state["info"])  # into every checkpoint; checked on resume
    run_record.check(state.get("ckpt_path"))  # before any table is built: a mismatch costs seconds
    caches = LogpCaches(cfg, data, cache_root, state["info"])  # at fit start: split over data-parallel ranks
    trainer = build_trainer(cfg, output_dir, loggers, desc=f"{loss.name} on {cfg.data.name}", model=policy,
                            extra_callbacks=[caches, run_record, state["interrupts"]])

    check_disk_space(cfg, trainer, policy, output_dir, cache_root, data.stats.get("train/pairs", 0),
                     data.stats.get("eval/pairs", 0))  # stops in one line where a folder lacks the room
    if trainer.is_global_zero:
        print(setup_line(trainer, policy))  # device, precision, weights dtype, attention implementation
    trainer.fit(module, datamodule=data, ckpt_path=state.get("ckpt_path"))
    metrics = _scalar_metrics(trainer.callback_metrics)
    for callback in trainer.callbacks:
        if isinstance(callback, ThroughputMonitor):
            metrics.update(callback.metrics(module))
    gathered = full_policy_state(trainer) if is_sharded(trainer.strategy) else None  # every rank takes part
    if not trainer.is_global_zero:  # data-parallel workers: rank 0 evaluates, saves and records
        return metrics
    trained = module.policy
    if gathered is not None:  # FSDP / ZeRO-3: the policy is split over ranks; rank 0 rebuilds it whole
        trained = rebuild_policy(prepare_for_training(load_start()[0], cfg.model), gathered)
        trained.to(trainer.strategy.root_device)
        del gathered

    def starting_policy() -> tuple[torch.nn.Module, Any]:
        """(model, context) of the untrained policy for the evaluation: a LoRA policy itself with its
        adapters disabled, the frozen reference if the module kept a usable one, else loaded again, so
        training never holds it."""
        if is_lora(trained):
            return trained, trained.disable_adapter
        if module.reference is not None and trained is module.policy:
            return module.reference, None
        return frozen_copy(load_start()[0]), None

    samples: list[dict] = []
    if artifacts.oracle is not None and artifacts.eval_prompts:
        from prefopt.eval import evaluate

        start, start_context = starting_policy()
        sampling = dict(seed=cfg.seed, batch_size=cfg.eval.batch_size, **dict(artifacts.generation))
        start_side = None
        if cfg.eval.get("cache_start", True):  # the start's samples and rewards: once per sweep
            from prefopt.eval_cache import cached_start_side

            task = OmegaConf.to_container(cfg.data.source, resolve=True)
            start_side, state["info"]["eval_start_cache"] = cached_start_side(
                cache_root, start, tokenizer, artifacts.eval_prompts, artifacts.oracle, task, start_context,
                **sampling,
            )
        eval_metrics, samples = evaluate(
            trained.eval(), start, tokenizer, artifacts.eval_prompts, artifacts.oracle,
            reference_context=start_context, start=start_side, n_samples=cfg.eval.n_samples_logged, **sampling,
        )
        metrics.update(_scalar_metrics(eval_metrics))
    state["samples"] = samples[: cfg.eval.n_samples_logged]
    if cfg.eval.get("generate") and artifacts.eval_rows:
        from prefopt.export import export_generations

        state["info"]["generations"] = export_generations(
            trained.eval(), tokenizer, artifacts.eval_rows, output_dir / "generations.json",
            generator=f"prefopt-{cfg.model.name}-{loss.name}", dataset=cfg.data.name,
            max_prompts=cfg.eval.generate_max_prompts, max_new_tokens=cfg.eval.generate_max_new_tokens,
            temperature=cfg.eval.generate_temperature, seed=cfg.seed, batch_size=cfg.eval.batch_size,
        )
    log_summary(loggers, metrics, state["samples"], step=trainer.global_step, hparams=hyperparameters(cfg))
    save_policy(trained, tokenizer, output_dir / "model")
    return metrics


def run(cfg: DictConfig) -> dict[str, float] | None:
    """Run one job and write its results.json; returns the metrics (None when it failed)."""
    from prefopt.loggers import fill_method, finish_loggers
    from prefopt.preflight import preflight, stop_if_unwritable
    from prefopt.progress import ConsoleLog
    from prefopt.signals import InterruptGuard, Interrupted, record_interrupt

    started = time.time()
    output_dir, multirun, group = _hydra_context()
    previous = read_results(output_dir / "results.json")
    if previous and previous.get("status") == "completed":
        print(f"[prefopt] {output_dir} already completed: skipping (its results are kept)")
        return previous.get("metrics", {})
    stop_if_unwritable(output_dir)  # before anything writes there: one line, exit 1
    console = ConsoleLog(output_dir / "run.log") if global_rank() == 0 else None  # the console, kept
    fill_method(cfg, HydraConfig.get().runtime.choices.get("loss"))
    state: dict[str, Any] = {"loggers": [], "info": {}, "samples": [], "status": "failed", "error": None,
                             "interrupts": InterruptGuard(bool(cfg.checkpoint.enabled)).install()}
    record = dict(config=OmegaConf.to_container(cfg, resolve=False), seed=cfg.seed)
    try:
        check_required(cfg)  # an unset `???` value: one line naming the key, not OmegaConf's traceback
        record["config"] = OmegaConf.to_container(cfg, resolve=True)
        state["ckpt_path"] = preflight(cfg, output_dir)  # the cache, and what ckpt_path resumes
        metrics = train_and_evaluate(cfg, output_dir, group, state)
        if global_rank() != 0:
            return metrics
        write_results(
            output_dir / "results.json",
            status="completed",
            metrics=metrics,
            samples=state["samples"],
            info=state["info"],
            wall_time_s=time.time() - started,
            **record,
        )
        state["status"] = "completed"
        print_summary(metrics, output_dir)
        return metrics
    except Interrupted as stop:  # SIGINT / SIGTERM: results say so, then exit 130 / 143
        state["status"], state["error"] = "interrupted", str(stop)
        record_interrupt(stop, output_dir, list(HydraConfig.get().overrides.task), global_rank(), info=state["info"],
                         wall_time_s=time.time() - started, **record)
    except BaseException as err:
        known = isinstance(err, user_errors())
        message = str(err) if known else f"{type(err).__name__}: {err}"
        state["error"] = message
        if global_rank() != 0:
            raise
        write_results(
            output_dir / "results.json",
            status="failed",
            error=message,
            traceback=None if known else traceback.format_exc(),
            metrics={},
            info=state["info"],
            wall_time_s=time.time() - started,
            **record,
        )
        if known:
            print(f"\nerror: {message}\n", file=sys.stderr)
            if not multirun:
                raise SystemExit(1) from None
            return None
        if multirun and isinstance(err, Exception):
            traceback.print_exc()
            return None
        raise
    finally:
        state["interrupts"].restore()
        finish_loggers(state["loggers"], state["status"], state["error"])
        state.clear()
        gc.collect()
        if console is not None:
            console.close()
