"""The steps of one training run, in the order `prefopt.run.runner.train_and_evaluate` calls them.

Each step takes the run's `RunPlan` (`prefopt.config.plan`: the loss, task source, optimizer factories,
starting choice and judge, each constructed once; the resume checkpoint and its pin, the batch layouts,
each decided once) or returns what the next one needs: the seeding, the
task's artifacts (built from `plan.start`), the policy, the data, the module, the trainer, the fit's
metrics, the trained policy, the judges (given the task: `run_judges`), the oracle evaluation, a second judge's evaluation, the
generation export and the save. What the run records (info for results.json, sample texts, the loggers to finish, the
stage running and the metrics so far) collects in a `RunOutcome`, which the caller keeps also when a step
fails. The fit's metrics are written to `<run dir>/train_metrics.json` as soon as training ends; a resume
with nothing left to train (an earlier attempt stopped in the evaluation or the export) takes them from
there, and a failure after training names the command that re-runs only what follows it (`rerun_hint`).
Exercised by `pytest tests/test_run.py tests/test_resume.py tests/test_lora.py tests/tasks/test_choose.py
tests/test_late_failures.py tests/test_judge_run.py` and `python src/run.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf

from prefopt.log import PLAIN, get_logger
from prefopt.store import memo
from prefopt.config.run_plan import RunPlan

StartLoader = Callable[[], tuple[torch.nn.Module, Any]]
log = get_logger()


@dataclass
class RunOutcome:
    """What a run leaves for results.json and its clean-up; filled as the steps go, kept when one fails."""

    interrupts: Any  # prefopt.train.signals.InterruptGuard: a trainer callback, restored when the run ends
    info: dict[str, Any] = field(default_factory=dict)  # results.json `info`; callbacks add to it during fit
    loggers: list = field(default_factory=list)
    samples: list[dict] = field(default_factory=list)
    status: str = "failed"
    error: str | None = None
    stage: str = "setup"  # the step running now: setup, training, evaluation, generations, export
    metrics: dict[str, float] = field(default_factory=dict)  # what the steps have computed so far


def scalar_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Scalar metrics with a `/` in their name (`train_loss` and the like are progress-bar copies)."""
    return {k: float(v) for k, v in metrics.items()
            if "/" in k and (hasattr(v, "item") or isinstance(v, (int, float)))}


def print_data_summary(source_drops: dict | None, stats: dict[str, Any]) -> None:
    """One line: pairs per split and every drop, by reason (the same counts go into results.json)."""
    drops: dict[str, int] = {}
    for split_drops in (source_drops or {}).values():
        for reason, n in split_drops.items():
            drops[reason.replace("_", " ")] = drops.get(reason.replace("_", " "), 0) + n
    drops["emptied by truncation"] = stats.get("train/dropped_truncated", 0) + stats.get("eval/dropped_truncated", 0)
    drops["prompt too long"] = stats.get("train/dropped_prompt_too_long", 0) + stats.get("eval/dropped_prompt_too_long", 0)
    dropped = ", ".join(f"{reason} {n}" for reason, n in drops.items() if n) or "none"
    log.info(f"data: {stats.get('train/pairs', 0)} train pairs, {stats.get('eval/pairs', 0)} eval pairs; "
             f"dropped: {dropped}")


def seed(cfg: DictConfig) -> None:
    """Quiet Lightning's banners, set the torch threads, then seed everything (after the plan is built)."""
    import lightning as L

    from prefopt.train.progress import quiet_lightning

    quiet_lightning()
    torch.set_num_threads(int(cfg.threads))
    L.seed_everything(cfg.seed, workers=True, verbose=False)


def task_artifacts(cfg: DictConfig, plan: RunPlan, outcome: RunOutcome) -> Any:
    """The task's rows, oracle, prompts and starting-policy source, built from the plan's start (once per
    sweep worker). A resume whose checkpoint records the source's `pin` reads the data as that run did
    (the plan's source is built with it: prefopt.train.resume)."""
    from prefopt.train.resume import check_pin

    source_cfg, pin = cfg.data.source, plan.pin
    if pin:
        source_cfg = {**OmegaConf.to_container(cfg.data.source, resolve=True), **pin}
    artifacts = memo.task_artifacts(plan.source, source_cfg, plan.start, cfg.model, Path(cfg.paths.cache_dir))
    if pin:
        check_pin(pin, artifacts.info.get("pin"), plan.ckpt_path)
    outcome.info.update(artifacts.info)
    return artifacts


def start_loader(cfg: DictConfig, start: Any, artifacts: Any) -> StartLoader:
    """A function returning (model, tokenizer) of the untrained policy `start` names (the task's SFT folder,
    model.path, model.gguf or a fresh tiny model): loaded once per process, a copy on every call."""
    from prefopt.models.load import load_start

    cache_root = Path(cfg.paths.cache_dir)
    depends_on = (cfg.model, cfg.data.source, artifacts.policy, cache_root, cfg.seed, artifacts.info.get("pin"))

    def load() -> tuple[torch.nn.Module, Any]:
        return load_start(start, cfg.model, cache_root, artifacts.policy, artifacts.corpus, cfg.seed)

    return lambda: memo.starting_policy(load, *depends_on)


def policy_to_train(cfg: DictConfig, load_start: StartLoader) -> tuple[torch.nn.Module, Any]:
    """(policy ready to train: LoRA, dropout, checkpointing, `model.compile` as configured, tokenizer)."""
    from prefopt.models.setup import prepare_for_training
    from prefopt.train.compiling import compile_policy

    policy, tokenizer = load_start()
    return compile_policy(prepare_for_training(policy, cfg.model), cfg.model.get("compile", False)), tokenizer


def preference_data(cfg: DictConfig, artifacts: Any, tokenizer: Any, outcome: RunOutcome, plan: RunPlan) -> Any:
    """The tokenized data module: bad rows fail here, before the trainer starts; drops are reported.
    Its batches carry the plan's layouts (`plan.layout`) and the marginal rows only when the plan's loss
    `needs_marginal` (as its `marginal_context` declares, after the source's `no_prompt_marker`)."""
    from prefopt.data.datamodule import PreferenceDataModule
    from prefopt.data.row_format import detect_layout
    from prefopt.scoring.marginal import no_prompt_marker

    outcome.info["data_pack"] = plan.layout.pack  # as resolved (data.pack=auto: on GPUs)
    loss = plan.loss
    data = PreferenceDataModule(
        artifacts.train_rows, artifacts.eval_rows, tokenizer,
        max_length=cfg.data.max_length, max_prompt_length=cfg.data.max_prompt_length,
        batch_size=cfg.data.batch_size, eval_batch_size=cfg.data.eval_batch_size, seed=cfg.seed,
        no_prompt_marker=no_prompt_marker(plan.source),
        marginal_context=loss.marginal_context if loss.needs_marginal else None,
        strict=cfg.data.get("strict", False),
        append_eos=artifacts.responses_end_with_eos, group_by_length=cfg.data.get("group_by_length", False),
        max_tokens_per_batch=cfg.data.get("max_tokens_per_batch"), layout=plan.layout,
    )
    data.setup()
    outcome.info["data"] = data.stats
    outcome.info["memo"] = dict(memo.stats)  # what this process reused from earlier runs (prefopt/store/memo.py)
    print_data_summary(outcome.info.get("drops"), data.stats)
    outcome.info["data_layout"] = detect_layout(artifacts.info, artifacts.train_rows)
    log.info(f"data layout: {outcome.info['data_layout']}")
    return data


def preference_module(cfg: DictConfig, policy: torch.nn.Module, plan: RunPlan) -> Any:
    """The LightningModule: the policy, the plan's loss and (optimizer, scheduler) factories."""
    from prefopt.train.compiling import compile_loss
    from prefopt.train.module import PreferenceModule

    compile_loss(plan.loss, cfg.model.get("compile", False))
    return PreferenceModule(policy, plan.loss, share_prompt=plan.layout.share_prompt,
                            optimizer=plan.optimizer, scheduler=plan.scheduler,
                            compile_setting=cfg.model.get("compile", False))


def during_training_eval(cfg: DictConfig, artifacts: Any, judges: Any, tokenizer: Any,
                         load_start: StartLoader) -> list[Any]:
    """`eval.every_n_steps=N`: the callback that judges a fixed prompt subset every N steps (its curves,
    prefopt.train.eval_during); none when it is off or nothing scores this data's answers."""
    every = int(cfg.eval.get("every_n_steps") or 0)
    judge = judges.extra or judges.oracle
    if every <= 0:
        return []
    if judge is None:
        log.warning(f"warning: eval.every_n_steps={every}: nothing scores the answers on data={cfg.data.name} "
                    "(no oracle, judge=none): no curves during training; judge=reward_model judge.path=... scores them")
        return []
    from prefopt.eval.judged import eval_prompts
    from prefopt.train.eval_during import DuringTrainingEval
    from prefopt.scoring.frozen import frozen_copy

    n = int(cfg.eval.get("during_training_prompts") or 64)
    prompts, prompt_ids = eval_prompts(artifacts, tokenizer, n, cfg.data.max_prompt_length)
    return [DuringTrainingEval(every, prompts[:n], prompt_ids[:n], tokenizer, judge.rewards, eval_sampling(cfg, artifacts),
                               start_fn=lambda: (frozen_copy(load_start()[0]), None))]


def trainer_for(cfg: DictConfig, output_dir: Path, group: str, plan: RunPlan, policy: torch.nn.Module, data: Any,
                tokenizer: Any, outcome: RunOutcome, extra_callbacks: list[Any] = ()) -> Any:
    """Loggers, the resume check (of the plan's checkpoint) and the callbacks (log-prob caches, run record,
    interrupts, `extra_callbacks`), then the trainer."""
    from prefopt.train.loggers import make_loggers, run_identity, wandb_identity
    from prefopt.train.logp_caches import LogpCaches
    from prefopt.train.resume import RunRecord
    from prefopt.config.schema import OptimSchema, advised_range
    from prefopt.train.compiling import CompileTimer
    from prefopt.train.trainer_factory import build_trainer

    if cfg.model.get("compile", False):
        extra_callbacks = [*extra_callbacks, CompileTimer(cfg.model.compile)]
    loss = plan.loss
    name, tags = run_identity(cfg, loss.name, cfg.data.name, cfg.method)
    outcome.loggers = loggers = make_loggers(cfg, output_dir, name, group, tags)
    if wandb_identity(loggers):
        outcome.info["wandb"] = wandb_identity(loggers)
    run_record = RunRecord(cfg, data, tokenizer, outcome.info)  # into every checkpoint; checked on resume
    run_record.check(plan.ckpt_path)  # before any table is built: a mismatch costs seconds
    caches = LogpCaches(cfg, data, Path(cfg.paths.cache_dir), outcome.info.update)  # at fit start, split over ranks
    return build_trainer(cfg, output_dir, loggers, desc=f"{loss.name} on {cfg.data.name}", model=policy,
                         extra_callbacks=[caches, run_record, outcome.interrupts, *extra_callbacks],
                         lr_range=advised_range(OptimSchema, "lr"))


def fit(cfg: DictConfig, trainer: Any, module: Any, data: Any, output_dir: Path, outcome: RunOutcome,
        ckpt_path: str | None = None) -> dict:
    """Check the disk, print the device line, train (resuming `ckpt_path`, the plan's); returns the logged metrics and throughput, recorded
    in train_metrics.json as soon as training ends. A resume with nothing left to train (its checkpoint
    is at the last step: an earlier attempt stopped in the evaluation or the export) returns the metrics
    that attempt recorded, as Lightning has none to give."""
    from prefopt.train.disk import check_disk_space
    from prefopt.train.hardware import setup_line

    policy = module.policy
    check_disk_space(cfg, trainer, policy, output_dir, Path(cfg.paths.cache_dir), data.stats.get("train/pairs", 0),
                     data.stats.get("eval/pairs", 0), resuming=ckpt_path is not None)  # one line if short
    if trainer.is_global_zero:
        log.info(setup_line(trainer, policy), extra=PLAIN)  # device, precision, weights dtype, attention implementation
    trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    if nothing_was_trained(outcome.info, trainer.global_step, output_dir):
        return recorded_train_metrics(output_dir, trainer.global_step)
    metrics = fit_metrics(trainer, module)
    if trainer.is_global_zero:
        record_train_metrics(output_dir, trainer.global_step, metrics)
    return metrics


def fit_metrics(trainer: Any, module: Any) -> dict[str, float]:
    """The last logged train/ and val/ metrics and the throughput (perf/) of the fit that just ended."""
    from prefopt.train.perf import ThroughputMonitor

    metrics = scalar_metrics(trainer.callback_metrics)
    for callback in trainer.callbacks:
        if isinstance(callback, ThroughputMonitor):
            metrics.update(callback.metrics(module))
    return metrics


TRAIN_METRICS = "train_metrics.json"  # in the run folder: the fit's metrics, written when training ends


def record_train_metrics(output_dir: Path, step: int, metrics: dict[str, float]) -> None:
    """train_metrics.json (whole: temp + fsync + rename): the step training ended at and its metrics, so
    a failure or a signal in the evaluation or the export loses none of them, and a resume finds them."""
    import json

    from prefopt.run.results import to_jsonable
    from prefopt.store.atomic import write_text_atomic

    text = json.dumps({"step": int(step), "metrics": to_jsonable(metrics)}, indent=2)
    try:
        write_text_atomic(output_dir / TRAIN_METRICS, text)
    except OSError as err:  # the run goes on (results.json gets them); only a later resume would lack them
        log.warning(f"could not write {output_dir / TRAIN_METRICS} ({err.strerror or err}): a resume after a "
                    "later failure would lack the training metrics")


def nothing_was_trained(info: dict[str, Any], step: int, output_dir: Path) -> bool:
    """The fit resumed a checkpoint of this run folder already at its last step (`step`): no step trained."""
    resumed = info.get("resumed_from") or {}
    ckpt = resumed.get("checkpoint")
    if ckpt is None or int(resumed.get("step", -1)) != int(step):
        return False
    return Path(output_dir).resolve() in Path(ckpt).resolve().parents


def recorded_train_metrics(output_dir: Path, step: int) -> dict[str, float]:
    """The metrics train_metrics.json recorded for training that ended at `step` in this folder; {} with a
    warning when there are none for that step (training ended before prefopt recorded them)."""
    from prefopt.run.results import read_results

    recorded = read_results(output_dir / TRAIN_METRICS) or {}
    if recorded.get("step") == step and isinstance(recorded.get("metrics"), dict):
        log.info(f"training had ended at step {step}: its metrics are those {output_dir / TRAIN_METRICS} recorded")
        return {k: float(v) for k, v in recorded["metrics"].items() if isinstance(v, (int, float))}
    log.warning(f"training had ended at step {step} but {output_dir / TRAIN_METRICS} holds no metrics for that "
                "step: results.json will lack train/, val/ and perf/ metrics")
    return {}


def trained_policy(cfg: DictConfig, trainer: Any, module: Any, load_start: StartLoader) -> torch.nn.Module | None:
    """The trained policy, whole, on rank 0 (FSDP / ZeRO-3: gathered from every rank and rebuilt);
    None on the other data-parallel ranks, which take part in the gather only."""
    from prefopt.contracts.predicates import is_sharded
    from prefopt.train.gather import full_policy_state, rebuild_policy
    from prefopt.models.setup import prepare_for_training

    gathered = full_policy_state(trainer) if is_sharded(trainer.strategy) else None  # every rank takes part
    if not trainer.is_global_zero:
        return None
    if gathered is None:
        return module.policy
    trained = rebuild_policy(prepare_for_training(load_start()[0], cfg.model), gathered)
    trained.to(trainer.strategy.root_device)
    return trained


def starting_policy(trained: torch.nn.Module, module: Any, load_start: StartLoader) -> tuple[torch.nn.Module, Any]:
    """(model, context) of the untrained policy for the evaluation: a LoRA policy itself with its adapters
    disabled, the frozen reference if the module kept a usable one, else loaded again, so training never
    holds it."""
    from prefopt.contracts.predicates import is_lora
    from prefopt.scoring.frozen import frozen_copy

    if is_lora(trained):
        return trained, trained.disable_adapter
    if module.reference is not None and trained is module.policy:
        return module.reference, None
    return frozen_copy(load_start()[0]), None


def run_judges(cfg: DictConfig, judge: Any, artifacts: Any, outcome: RunOutcome) -> Any:
    """Who scores this run's answers (`prefopt.eval.judge.Judges`): the task's oracle where it has one, the
    chosen judge where it is not the oracle, both, or none. A judge that cannot format the data's prompts
    (chat rows and a tokenizer without a chat template) stops here, before training."""
    from prefopt.eval.judge import JudgeError

    judges = judge.judges(artifacts.oracle if artifacts.eval_prompts else None)
    prompts = artifacts.eval_prompts or [row["prompt"] for row in artifacts.eval_rows]
    if judges.extra is not None:
        if not prompts:
            raise JudgeError(f"judge={judge.name}: data={cfg.data.name} has no eval rows to answer; hold some out "
                             "(data.source.eval_fraction > 0, or data.source.eval_split)")
        judges.extra.check_prompts(prompts)
    scorers = [name for name, j in (("the task's oracle", judges.oracle), (judge.describe(), judges.extra)) if j]
    outcome.info["judges"] = [j.name for j in (judges.oracle, judges.extra) if j]
    note = f"judged by {' and '.join(scorers)}" if scorers else judge.unscored_note(cfg.data.name)
    if note:
        log.info(note)
    return judges


def eval_sampling(cfg: DictConfig, artifacts: Any) -> dict[str, Any]:
    """Sampling settings of the evaluation: the task's (max_new_tokens, temperature), else eval.generate_*."""
    task = dict(artifacts.generation) or dict(max_new_tokens=cfg.eval.generate_max_new_tokens,
                                              temperature=cfg.eval.generate_temperature)
    return dict(seed=cfg.seed, batch_size=cfg.eval.batch_size, **task)


def oracle_evaluation(cfg: DictConfig, artifacts: Any, oracle: Any, trained: torch.nn.Module,
                      start: tuple[torch.nn.Module, Any], tokenizer: Any, outcome: RunOutcome) -> tuple[dict, Any]:
    """Sample from the trained and the starting policy and score both with the task's oracle (the bound
    `OracleJudge`); the start's side is cached once per sweep (`eval.cache_start`). Keeps the logged
    samples in `outcome`; returns (metrics, both policies' answers, for a second judge)."""
    from prefopt.eval.evaluate import evaluate_answers

    start_model, start_context = start
    sampling = eval_sampling(cfg, artifacts)
    rewards = oracle.rewards
    start_side = None
    if cfg.eval.get("cache_start", True):
        from prefopt.eval.cache import cached_start_side

        task = OmegaConf.to_container(cfg.data.source, resolve=True)
        start_side, outcome.info["eval_start_cache"] = cached_start_side(
            Path(cfg.paths.cache_dir), start_model, tokenizer, artifacts.eval_prompts, rewards, task,
            start_context, **sampling,
        )
    eval_metrics, samples, answers = evaluate_answers(
        trained.eval(), start_model, tokenizer, artifacts.eval_prompts, rewards,
        reference_context=start_context, start=start_side, n_samples=cfg.eval.n_samples_logged, **sampling,
    )
    outcome.samples = samples[: cfg.eval.n_samples_logged]
    return scalar_metrics(eval_metrics), answers


def judge_ranks(cfg: DictConfig, trainer: Any, judge: Any) -> Any:
    """Every rank (a collective): the judge's scoring split over the data-parallel ranks of a DDP-like
    run (prefopt.eval.rank_share: ranks > 0 `serve()`, rank 0 scores with `.judge` inside `with`); one
    process, or no judge beside the oracle: `.judge` is `judge` itself."""
    from prefopt.eval.rank_share import JudgeRanks, channel_for

    channel = channel_for(trainer.strategy, cfg.eval.get("share_timeout_s", 7200)) if judge is not None else None
    return JudgeRanks(judge, channel)


def judge_evaluation(cfg: DictConfig, artifacts: Any, judge: Any, trained: torch.nn.Module,
                     start: tuple[torch.nn.Module, Any], tokenizer: Any, output_dir: Path, outcome: RunOutcome,
                     answers: Any = None) -> dict[str, float]:
    """A judge other than the oracle scores the policy's and the starting policy's answers to the same
    prompts (the oracle evaluation's `answers`, else sampled here): eval/judge_* metrics and
    judgements.jsonl (prefopt.eval.judged); the start's scored side is cached per sweep. Rank 0 samples and
    records; in a data-parallel run `judge` is `judge_ranks`'s, whose scoring each rank shares."""
    from prefopt.eval import judged
    from prefopt.eval.cache import cached_judged_start
    from prefopt.eval.evaluate import policy_answers

    start_model, start_context = start
    sampling = eval_sampling(cfg, artifacts)
    if answers is None:
        prompts, prompt_ids = judged.eval_prompts(artifacts, tokenizer, cfg.eval.generate_max_prompts,
                                                  cfg.data.max_prompt_length)
        answers = policy_answers(trained.eval(), start_model, tokenizer, prompts, prompt_ids,
                                 reference_context=start_context, **sampling)
    compute = partial(judged.judged_start, judge, start_model, tokenizer, answers, start_context, **sampling)
    if cfg.eval.get("cache_start", True):
        task = OmegaConf.to_container(cfg.data.source, resolve=True)
        side, outcome.info["eval_judged_start_cache"] = cached_judged_start(
            Path(cfg.paths.cache_dir), start_model, tokenizer, answers.prompts, answers.prompt_ids,
            judge.fingerprint(), task, compute, start_context, **sampling)
    else:
        side = compute()
    metrics, records = judged.judge_answers(judge, answers, side)
    judge.close()
    if getattr(judge, "shares", None):  # scored by the data-parallel ranks: the pairs each scored
        outcome.info["judge_shares"] = list(judge.shares)
    judged.write_judgements(output_dir / judged.JUDGEMENTS, records)
    outcome.samples = outcome.samples or judged.logged_samples(records, cfg.eval.n_samples_logged)
    return metrics


def export_generations(cfg: DictConfig, artifacts: Any, trained: torch.nn.Module, tokenizer: Any, loss_name: str,
                       output_dir: Path, outcome: RunOutcome) -> None:
    """`eval.generate=true`: answer the eval rows' prompts, or every instruction of
    `eval.generate_prompts_file` (prefopt.eval.prompts_file), into generations.json (AlpacaEval format)."""
    from prefopt.eval.prompts_file import read_prompts_file
    from prefopt.eval.export import export_generations as export, generator_name

    generator = generator_name(output_dir, cfg.get("method") or loss_name, cfg.loss.get("beta"), cfg.optim.lr,
                               cfg.seed, model=cfg.model.name)  # unique within a study (AlpacaEval's key)
    outcome.info["generations"] = export(
        trained.eval(), tokenizer, artifacts.eval_rows, output_dir / "generations.json",
        generator=generator, dataset=cfg.data.name,
        max_prompts=cfg.eval.generate_max_prompts, max_new_tokens=cfg.eval.generate_max_new_tokens,
        temperature=cfg.eval.generate_temperature, seed=cfg.seed, batch_size=cfg.eval.batch_size,
        instructions=read_prompts_file(file) if (file := cfg.eval.get("generate_prompts_file")) else None,
    )


def log_and_save(cfg: DictConfig, trainer: Any, metrics: dict[str, float], trained: torch.nn.Module, tokenizer: Any,
                 output_dir: Path, outcome: RunOutcome) -> None:
    """Send the summary (metrics, samples, hyperparameters) to the loggers and save the policy to model/."""
    from prefopt.train.loggers import hyperparameters, log_summary
    from prefopt.models.setup import save_policy

    log_summary(outcome.loggers, metrics, outcome.samples, step=trainer.global_step, hparams=hyperparameters(cfg))
    save_policy(trained, tokenizer, output_dir / "model")


LATE_STAGES = ("gather", "evaluation", "generations", "export")  # after training: a resume re-runs only these


def rerun_command(output_dir: Path, overrides: list[str]) -> str | None:
    """After training completed: the command that resumes the run folder's newest checkpoint (the final
    step), so only the stages after training run again; None when the run saved no checkpoint."""
    import shlex

    from prefopt.train.resume import last_checkpoint

    if last_checkpoint(output_dir) is None:
        return None
    args = [shlex.quote(a) for a in overrides if not a.startswith(("ckpt_path=", "hydra.run.dir="))]
    return " ".join(["python src/run.py", *args, f"hydra.run.dir={shlex.quote(str(output_dir))}", "ckpt_path=last"])


def rerun_hint(output_dir: Path, stage: str, overrides: list[str]) -> str | None:
    """For a failure in `stage`: after training, the clause naming the command that re-runs only what
    follows training (None before training completed, or with no checkpoint to resume)."""
    command = rerun_command(output_dir, overrides) if stage in LATE_STAGES else None
    if command is None:
        return None
    return f"{stage} failed after training completed; re-run only what follows training with: {command}"
