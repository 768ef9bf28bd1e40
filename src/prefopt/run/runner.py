"""One training run, start to finish: check config, build data and policy, fit, evaluate, save.

`src/run.py` (the Hydra app) calls `run(cfg)` for each job. A user's mistake (config, data, model
location) is reported as one message and recorded in results.json as `failed`; in a multirun the other
jobs go on. `train_and_evaluate` reads top to bottom: each step is a function of prefopt/run/steps.py, and
what the run records collects in a `RunOutcome`. Exercised by `python src/run.py`, `python src/run.py -m
loss=dpo,rmipo` and `pytest tests/test_run.py tests/test_signals.py tests/test_resume.py`.
"""

from __future__ import annotations

import gc
import time
import traceback
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from prefopt.log import PLAIN, env_rank, get_logger
from prefopt.run import folder, steps, sweep_outcome
from prefopt.config.components import ConfigError
from prefopt.train.loggers import sweep_group
from prefopt.run.results import ResultsNotWritten, write_results
from prefopt.run.steps import RunOutcome
from prefopt.config.run_plan import RunPlan, plan
from prefopt.config.validate import validate_config

log = get_logger()


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean the user must change something: reported without a traceback."""
    from prefopt.data.errors import DataError
    from prefopt.errors import CacheError, TrainingDiverged
    from prefopt.models.load import ModelLoadError

    return (ConfigError, DataError, ModelLoadError, TrainingDiverged, CacheError)


def _hydra_context() -> tuple[Path, bool, str]:
    """(output dir, is multirun, sweep group name) of the current Hydra job; the jobs of a parallel
    launcher (joblib, submitit) tag their console lines with their number."""
    from prefopt.log import set_job

    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    parallel = multirun and "BasicLauncher" not in str(hc.launcher.get("_target_", "BasicLauncher"))
    set_job(int(hc.job.num) if parallel else None)
    group = sweep_group(hc.sweep.dir if multirun else None, hc.runtime.choices.get("sweep"))
    return Path(hc.runtime.output_dir), multirun, group


def print_summary(metrics: dict[str, float], output_dir: Path) -> None:
    """The headline metrics as a table, and where results.json and the policy are."""
    keys = [k for k in metrics if k.startswith(("eval/", "val/loss", "val/rewards/accuracies", "train/loss"))]
    width = max((len(k) for k in keys), default=10)
    rule = "-" * (width + 14)
    rows = [f"{key:<{width}}  {metrics[key]:>10.4g}" for key in keys]
    log.info("\n".join(["", rule, *rows, rule, f"results: {output_dir / 'results.json'}",
                        f"policy:  {output_dir / 'model'}", ""]), extra=PLAIN)


def train_and_evaluate(cfg: DictConfig, plan: RunPlan, output_dir: Path, group: str,
                       outcome: RunOutcome) -> dict[str, float]:
    """The run itself, step by step (prefopt/run/steps.py), from its plan (prefopt.config.plan: the loss, the
    task source, the optimizer factories, the start and the judge, constructed once, the resume and the layouts,
    decided once); what it records goes
    into `outcome` (the stage running, the metrics so far), so the caller can clean up and record also
    when a step fails."""
    steps.seed(cfg)
    artifacts = steps.task_artifacts(cfg, plan, outcome)
    judges = steps.run_judges(cfg, plan.judge, artifacts, outcome)  # the task's oracle, another judge, both or none
    load_start = steps.start_loader(cfg, plan.start, artifacts)
    policy, tokenizer = steps.policy_to_train(cfg, load_start)
    data = steps.preference_data(cfg, artifacts, tokenizer, outcome, plan)
    module = steps.preference_module(cfg, policy, plan)
    during = steps.during_training_eval(cfg, artifacts, judges, tokenizer, load_start)  # eval.every_n_steps
    trainer = steps.trainer_for(cfg, output_dir, group, plan, policy, data, tokenizer, outcome, during)
    outcome.stage = "training"
    metrics = outcome.metrics = steps.fit(cfg, trainer, module, data, output_dir, outcome, plan.ckpt_path)  # + train_metrics.json
    outcome.stage = "gather"
    ranks = steps.judge_ranks(cfg, trainer, judges.extra)  # every rank: the judge's scoring, split over DP ranks
    trained = steps.trained_policy(cfg, trainer, module, load_start)
    if trained is None:  # data-parallel workers: score their shares of the judge's answers; rank 0 records
        ranks.serve()
        return metrics
    if judges.oracle is not None or judges.extra is not None:
        outcome.stage = "evaluation"
        with ranks as judge:  # on leaving, however the evaluation ends, the other ranks stop serving
            start = steps.starting_policy(trained, module, load_start)
            answers = None  # both policies' answers, sampled once for both judges
            if judges.oracle is not None:
                oracle_metrics, answers = steps.oracle_evaluation(cfg, artifacts, judges.oracle, trained, start,
                                                                  tokenizer, outcome)
                metrics.update(oracle_metrics)
            if judge is not None:
                metrics.update(steps.judge_evaluation(cfg, artifacts, judge, trained, start, tokenizer, output_dir,
                                                      outcome, answers))
    if cfg.eval.get("generate") and (artifacts.eval_rows or cfg.eval.get("generate_prompts_file")):
        outcome.stage = "generations"
        steps.export_generations(cfg, artifacts, trained, tokenizer, plan.loss.name, output_dir, outcome)
    outcome.stage = "export"
    steps.log_and_save(cfg, trainer, metrics, trained, tokenizer, output_dir, outcome)
    return metrics


def _claim_folder(cfg: DictConfig, output_dir: Path, multirun: bool) -> tuple[bool, dict | None, Any]:
    """(skip, what the job returns, the folder's lock): a completed run of this config is skipped, its
    kept metrics returned; otherwise the run takes the folder's lock.
    A folder in use or holding another config's results: one line, the folder untouched; a single run
    exits 1, a multirun job is noted as failed and the sweep goes on (prefopt.run.folder)."""
    from prefopt.config.preflight import stop_if_unwritable

    try:
        if (previous := folder.completed_metrics(output_dir, cfg)) is not None:
            _note_job(output_dir, multirun, "completed", None, cfg, previous)
            return True, previous, None
        stop_if_unwritable(output_dir)  # before anything writes there: one line, exit 1
        return False, None, (folder.hold(output_dir) if env_rank() == 0 else None)
    except folder.FolderTaken as err:
        _note_job(output_dir, multirun, "failed", str(err), cfg)
        _goes_on(err, str(err), multirun)  # one line; a single run exits 1 there
        return True, None, None


def _announce_tuned(cfg: DictConfig, outcome: RunOutcome) -> None:
    """Say which tuned settings (conf/tuned/) the run took, and record them in results.json `info.tuned`."""
    from prefopt.config import tuned

    hc = HydraConfig.get()
    applied = tuned.applied(cfg, hc.runtime.choices.get("tuned"), list(hc.overrides.task))
    if applied:
        log.info(tuned.describe(applied))
        outcome.info["tuned"] = applied


def _note_job(output_dir: Path, multirun: bool, status: str, error: str | None, cfg: DictConfig | None = None,
              metrics: dict | None = None) -> None:
    """A multirun job's outcome for the sweep's end-of-run table (prefopt.run.sweep_outcome)."""
    if multirun and env_rank() == 0:
        hc = HydraConfig.get()
        row = sweep_outcome.job_row(cfg, metrics) if cfg is not None else {}
        sweep_outcome.note(Path(hc.sweep.dir), int(hc.job.num), output_dir, status, error, row)


def _record_completed(output_dir: Path, metrics: dict[str, float], outcome: RunOutcome, started: float,
                      record: dict) -> None:
    """results.json of a completed run, then the summary table on the console."""
    write_results(output_dir / "results.json", status="completed", metrics=metrics, samples=outcome.samples,
                  info=outcome.info, wall_time_s=time.time() - started, **record)
    outcome.status = "completed"
    print_summary(metrics, output_dir)


def _failure_message(err: BaseException) -> str:
    return str(err) if isinstance(err, user_errors()) else f"{type(err).__name__}: {err}"


def _write_failure(path: Path, err: BaseException, outcome: RunOutcome, started: float, record: dict) -> None:
    """results.json of a failed run: the stage it failed in, the metrics computed until then, the one-line
    error (with, after training, the command that re-runs only the missing stages) and the traceback of a
    bug (not a user's mistake), which then also gets the hint on the console."""
    if isinstance(err, ResultsNotWritten):  # results.json itself could not be written: said on stderr already
        return
    known = isinstance(err, user_errors())
    hint = steps.rerun_hint(path.parent, outcome.stage,
                            list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else [])
    if hint:
        outcome.error = f"{outcome.error}; {hint}"
        if not known:  # a bug's console output is its traceback, which does not say this
            log.warning(hint)
    write_results(path, status="failed", stage=outcome.stage, error=outcome.error,
                  traceback=None if known else traceback.format_exc(), metrics=outcome.metrics, info=outcome.info,
                  wall_time_s=time.time() - started, **record)


def _goes_on(err: BaseException, message: str, multirun: bool) -> bool:
    """After a failure is recorded: True when the process goes on (a multirun's next job); a user's
    mistake in a single run exits 1 with its one line; anything else is raised again by the caller."""
    if isinstance(err, user_errors()):
        log.error(f"\nerror: {message}\n", extra=PLAIN)
        if not multirun:
            raise SystemExit(1) from None
        return True
    if multirun and isinstance(err, Exception):
        traceback.print_exc()
        return True
    return False


def release_garbage() -> None:
    """Collect the run's reference cycles, then freeze what survives (imports, the sweep memo, the
    loaded libraries' state): later collections, here and Python's automatic ones during the next run,
    skip those objects. A full collection of this process's ~500k objects took 0.2-0.27 s, twice a
    run, about 6% of a sort run in a sweep; after the freeze it takes microseconds."""
    gc.collect()
    gc.freeze()


def _finish(outcome: RunOutcome, console: Any) -> None:
    """Restore the signal handlers, finish the loggers with the run's status, close run.log."""
    from prefopt.train.loggers import finish_loggers

    outcome.interrupts.restore()
    finish_loggers(outcome.loggers, outcome.status, outcome.error)
    outcome.loggers, outcome.samples, outcome.info = [], [], {}  # nothing of the run outlives it
    release_garbage()
    if console is not None:
        console.close()


def run(cfg: DictConfig) -> dict[str, float] | None:
    """Run one job and write its results.json; returns the metrics (None when it failed)."""
    from prefopt.train.loggers import fill_method
    from prefopt.config.preflight import preflight
    from prefopt.train.progress import ConsoleLog
    from prefopt.run.interrupted import record_interrupt
    from prefopt.train.signals import InterruptGuard, Interrupted

    started = time.time()
    output_dir, multirun, group = _hydra_context()
    fill_method(cfg, HydraConfig.get().runtime.choices.get("loss"))
    skip, previous, lock = _claim_folder(cfg, output_dir, multirun)
    if skip:
        return previous
    console = ConsoleLog(output_dir / "run.log") if env_rank() == 0 else None  # the console, kept
    outcome = RunOutcome(interrupts=InterruptGuard(bool(cfg.checkpoint.enabled)).install())
    record = dict(config=OmegaConf.to_container(cfg, resolve=False), seed=cfg.seed)
    try:
        if cfg.get("gpu_jobs") is not None:  # hydra/launcher=gpu_jobs: this job's GPU (prefopt/config/gpu_jobs.py)
            from prefopt.config.gpu_jobs import pin_job_device

            pin_job_device(cfg, int(OmegaConf.select(HydraConfig.get(), "job.num", default=0)))  # single run: 0
        built = validate_config(cfg)  # every problem of the config in one message, one line each, before anything loads
        record["config"] = OmegaConf.to_container(cfg, resolve=True)
        _announce_tuned(cfg, outcome)
        preflight(cfg, output_dir)  # the cache
        run_plan = plan(cfg, output_dir, built)  # what validation built, the resume, the start, the judge, the layouts
        metrics = train_and_evaluate(cfg, run_plan, output_dir, group, outcome)
        if env_rank() == 0:
            _record_completed(output_dir, metrics, outcome, started, record)
        return metrics
    except Interrupted as stop:  # SIGINT / SIGTERM: results say so, then exit 130 / 143
        outcome.status, outcome.error = "interrupted", str(stop)
        record_interrupt(stop, output_dir, list(HydraConfig.get().overrides.task), env_rank(), info=outcome.info,
                         metrics=outcome.metrics, stage=outcome.stage, wall_time_s=time.time() - started, **record)
    except BaseException as err:
        outcome.error = _failure_message(err)
        if env_rank() != 0:
            raise
        _write_failure(output_dir / "results.json", err, outcome, started, record)
        if not _goes_on(err, outcome.error, multirun):
            raise
        return None
    finally:
        _note_job(output_dir, multirun, outcome.status, outcome.error, cfg, outcome.metrics)
        _finish(outcome, console)
        folder.release(lock)
