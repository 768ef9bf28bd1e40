"""Resuming only what was started: checkpoints carry a record of the run, checked before resuming.

Every checkpoint the trainer writes carries `prefopt_run`: the resolved config (less the keys a resume
may change, `RESUMABLE_KEYS`), fingerprints of the tokenized train and eval pairs (which fixes the rows,
their order, the train/eval split and the tokenization) and of the tokenizer, and the data source's
`pin` (a file source's: how many of the file's first rows it read). A resume reads the data as the
checkpoint's run did (`recorded_pin`): rows appended to a jsonl file since are left out, so the split
and the tokenizer (cached by the rows' text) are the checkpoint's own, not a rebuild from the grown file.
Resuming against a run whose record still differs (another config, rows edited or gone) stops with one
line naming what changed (`ResumeMismatch`). The check runs before fit, reading
only the record of the checkpoint file (memory-mapped, so a 7B checkpoint costs no load), and again
when Lightning restores a checkpoint it picked itself (SLURM's `hpc_ckpt_*.ckpt` after a requeue).

`ckpt_path`: null (fresh; a SLURM job that Lightning requeued resumes from the newest readable checkpoint
of its folder, `requeued_checkpoint`), `last` (the newest
readable `checkpoints/*.ckpt` or `hpc_ckpt_*.ckpt` of the run folder, so a periodic checkpoint written
just before a kill cut `last.ckpt` short still counts; none is an error), `last_or_fresh`
(the same, or a fresh start when there is none) or a path. Exercised by `pytest tests/test_resume.py`.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback
from omegaconf import DictConfig, OmegaConf

from prefopt.store.cache import fingerprint
from prefopt.errors import ResumeMismatch
from prefopt.log import get_logger

log = get_logger()
RECORD_KEY = "prefopt_run"
RECORD_VERSION = 1
# config keys a resumed run may change: how long and how it trains no further, where it writes, what it logs
RESUMABLE_KEYS = (
    "trainer.max_steps", "trainer.max_epochs", "trainer.val_check_interval", "trainer.log_every_n_steps",
    "trainer.num_sanity_val_steps", "trainer.enable_model_summary", "logger", "paths", "eval", "ckpt_path",
    "checkpoint", "threads", "tags", "objective", "method", "sweep", "data.eval_batch_size", "logp_cache",
    "share_prompt", "judge",  # who scores the answers: decided after training
    # the learning rate, alone of optim (and the optimizer argument it is passed as): a diverged run goes on
    # from checkpoints/last-good.ckpt with a lower one (prefopt.train.guards); the restored optimizer and
    # schedule follow the new value (PreferenceModule.on_train_start)
    "optim.lr", "optim.optimizer.lr",
)


def flat_config(cfg: DictConfig | dict, prefix: str = "", ignore: tuple[str, ...] = RESUMABLE_KEYS) -> dict[str, Any]:
    """{dotted key: value} of a resolved config, leaving out `ignore` (and what is under those keys)."""
    node = OmegaConf.to_container(cfg, resolve=True) if OmegaConf.is_config(cfg) else cfg
    out: dict[str, Any] = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if name in ignore:
            continue
        if isinstance(value, dict) and value:
            out.update(flat_config(value, f"{name}.", ignore))
        else:
            out[name] = value
    return out


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """Digest of a tokenizer's vocabulary (token -> id) and special tokens."""
    vocab = sorted(tokenizer.get_vocab().items()) if hasattr(tokenizer, "get_vocab") else len(tokenizer)
    special = getattr(tokenizer, "special_tokens_map", {})
    return fingerprint(vocab, special)


def run_record(cfg: DictConfig, data: Any, tokenizer: Any) -> dict[str, Any]:
    """What a checkpoint of this run must match to be resumed by it."""
    from prefopt.scoring.logp_cache import pairs_fingerprint

    data.setup()
    return {
        "version": RECORD_VERSION,
        "config": flat_config(cfg),
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "train_pairs": pairs_fingerprint(data.train_dataset),
        "eval_pairs": pairs_fingerprint(data.eval_dataset),
    }


def differences(saved: dict[str, Any], now: dict[str, Any], limit: int = 4) -> list[str]:
    """What differs between a checkpoint's record and this run's, most telling first. Keys a resume may
    change are left out also where an older checkpoint recorded them (before they became resumable)."""
    found = []
    if saved.get("tokenizer") != now["tokenizer"]:
        found.append("the tokenizer (a rebuilt or different tokenizer: token ids no longer mean the same)")
    for split in ("train", "eval"):
        if saved.get(f"{split}_pairs") != now[f"{split}_pairs"]:
            found.append(f"the {split} pairs (rows, order, split or tokenization)")
    found += changed_keys(saved.get("config", {}), now["config"], RESUMABLE_KEYS)
    return at_most(found, limit)


def changed_keys(old: dict[str, Any], new: dict[str, Any], ignore: tuple[str, ...]) -> list[str]:
    """"key old -> new" for each dotted key of two flat configs whose values differ, leaving out `ignore`
    and the keys under them (a resume's check; prefopt.run.folder's for a completed folder)."""
    return [f"{key} {old.get(key, '<unset>')!r} -> {new.get(key, '<unset>')!r}"
            for key in sorted(set(old) | set(new))
            if not any(key == k or key.startswith(f"{k}.") for k in ignore)
            and old.get(key, "<unset>") != new.get(key, "<unset>")]


def at_most(found: list[str], limit: int) -> list[str]:
    """The first `limit` findings, then how many more."""
    return found if len(found) <= limit else [*found[:limit], f"{len(found) - limit} more"]


def recorded_pin(ckpt: str | None) -> dict[str, Any] | None:
    """The data-source settings the checkpoint's run read its data with (a file source's row counts),
    to build this run's data with; None for a fresh start, a sharded checkpoint or a source without one."""
    if ckpt is None or not Path(ckpt).is_file():
        return None
    pin = (read_record(Path(ckpt)) or {}).get("pin")
    if pin:
        settings = ", ".join(f"data.source.{k}={v}" for k, v in pin.items())
        log.info(f"resuming from {ckpt}: reading the data as its run did ({settings}; rows added since "
                 "are left out)")
    return pin or None


def resume_decision(ckpt_setting: str | None, output_dir: Path) -> tuple[str | None, dict[str, Any] | None]:
    """The run's resume, decided once (prefopt.config.plan keeps it): the checkpoint `ckpt_setting` (the
    config's `ckpt_path`) names in `output_dir` (None: a fresh start) and the data pin it records."""
    ckpt = resolve_ckpt_path(ckpt_setting, output_dir)
    return ckpt, recorded_pin(ckpt)


def check_pin(pin: dict[str, Any], now: dict[str, Any] | None, ckpt: str) -> None:
    """Raise ResumeMismatch (one line) when the data read with the checkpoint's `pin` is no longer all there."""
    if now != pin:
        raise ResumeMismatch(f"cannot resume from {ckpt}: the data it trained on is no longer there (its run read "
                             f"{pin}, the data now gives {now}); restore the data, or start a fresh run in a new "
                             "folder (without ckpt_path)")


def check_record(saved: dict[str, Any] | None, now: dict[str, Any], ckpt: str) -> None:
    """Raise ResumeMismatch (one line) when the checkpoint's record differs from this run's."""
    if saved is None:
        log.warning(f"warning: {ckpt} records no run (saved by an older prefopt): resumed unchecked")
        return
    changed = differences(saved, now)
    if changed:
        raise ResumeMismatch(f"cannot resume from {ckpt}: this run differs from the one that saved it in "
                             f"{'; '.join(changed)}. Resume with the same settings and data, or start a "
                             "fresh run in a new folder (without ckpt_path)")


@functools.lru_cache(maxsize=4)
def _record_or_problem(ckpt: Path, mtime_ns: int, size: int) -> tuple[Any, str | None]:
    """(the file's run record, None), or (None, why it cannot be resumed from). The file must match the
    checksum written with it (prefopt.train.ckpt_io) and is loaded as tensors and plain containers only
    (`weights_only=True`: a crafted pickle runs nothing), memory-mapped, keeping only the record; keyed
    by the file's mtime and size, so the run's three readers (pick, pin, check) load it once."""
    import torch

    from prefopt.train.ckpt_io import UNVERIFIED, verify

    problem = verify(ckpt)
    if problem not in (None, UNVERIFIED):
        return None, problem
    try:
        checkpoint = torch.load(ckpt, map_location="cpu", mmap=True, weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a damaged or crafted file
        first = str(err).strip().splitlines()[0].split(". ")[0] if str(err).strip() else ""
        return None, f"{type(err).__name__}: {first[:200]}"
    if not isinstance(checkpoint, dict):
        return None, f"it holds a {type(checkpoint).__name__}, not a Lightning checkpoint"
    record = checkpoint.get(RECORD_KEY)
    if record is not None and not isinstance(record, dict):
        return None, f"its run record is a {type(record).__name__}, not a mapping"
    return record, None


def _record_of(ckpt: Path) -> tuple[Any, str | None]:
    stat = ckpt.stat()
    return _record_or_problem(ckpt, stat.st_mtime_ns, stat.st_size)


def _why_unreadable(ckpt: Path) -> str | None:
    if ckpt.is_dir():  # a sharded (FSDP / DeepSpeed) checkpoint: Lightning reads it
        return None
    return _record_of(ckpt)[1]


def _problem_phrase(problem: str) -> str:
    """`problem` as a clause: checksum findings read as they are, loader errors as "unreadable (...)"."""
    return problem if problem.startswith(("it ", "its ")) else f"the file is unreadable ({problem})"


def read_record(ckpt: Path) -> dict[str, Any] | None:
    """The run record of a checkpoint file, read without loading its tensors (memory-mapped)."""
    record, problem = _record_of(ckpt)
    if problem:
        raise ResumeMismatch(f"cannot resume from {ckpt}: {_problem_phrase(problem)}; delete it or pick "
                             "another (ckpt_path=last picks the newest good checkpoint of the run folder)")
    return record


def checkpoints_newest_first(output_dir: Path) -> list[Path]:
    """Every checkpoint of a run folder (`checkpoints/*.ckpt`, SLURM's `hpc_ckpt_*.ckpt`), newest first."""
    found = [*(output_dir / "checkpoints").glob("*.ckpt"), *output_dir.glob("hpc_ckpt_*.ckpt")]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def last_checkpoint(output_dir: Path) -> Path | None:
    """The newest readable checkpoint of a run folder (one cut short by a kill is skipped, with a note)."""
    for ckpt in checkpoints_newest_first(output_dir):
        problem = _why_unreadable(ckpt)
        if problem is None:
            return ckpt
        log.warning(f"skipping {ckpt}: {_problem_phrase(problem)}; trying the previous checkpoint")
    return None


def requeued_checkpoint(output_dir: Path) -> str | None:
    """Under SLURM, the checkpoint a requeued job resumes from: the newest readable one of its folder,
    when Lightning's requeue left an `hpc_ckpt_*.ckpt` there (else None). The job restarts with its first
    command, without `ckpt_path`; Lightning alone would take its hpc checkpoint, saved at SIGUSR1, even
    when the SIGTERM that followed left a later `last.ckpt` (prefopt.train.signals)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    if not SLURMEnvironment.detect() or not any(output_dir.glob("hpc_ckpt_*.ckpt")):
        return None
    found = last_checkpoint(output_dir)
    if found is not None:
        log.info(f"SLURM requeue: resuming from {found}, the newest checkpoint of the run")
    return str(found) if found is not None else None


def resolve_ckpt_path(value: str | None, output_dir: Path) -> str | None:
    """The checkpoint `ckpt_path` asks for, as a path (None: a fresh start, or a requeued SLURM job's
    newest checkpoint); one-line errors."""
    if value in (None, "", "null"):
        return requeued_checkpoint(output_dir)
    if value in ("last", "last_or_fresh"):
        found = last_checkpoint(output_dir)
        if found is not None:
            return str(found)
        if value == "last_or_fresh":
            log.info(f"ckpt_path=last_or_fresh: no checkpoint in {output_dir / 'checkpoints'}, starting fresh")
            return None
        raise ResumeMismatch(f"ckpt_path=last: {output_dir / 'checkpoints'} has no readable checkpoint, so there is "
                             "nothing to resume; set hydra.run.dir to the interrupted run's folder, or use "
                             "ckpt_path=last_or_fresh to start fresh when there is none")
    if not Path(value).exists():
        raise ResumeMismatch(f"ckpt_path={value}: no such checkpoint")
    if Path(value).is_file():
        read_record(Path(value))  # checksum and a tensors-only load, before anything else reads it
    return str(value)


class RunRecord(Callback):
    """Writes the run record into every checkpoint and checks it on every restore. `check(ckpt)`
    checks a checkpoint file before fit starts; `info` gets `resumed_from` (path and step)."""

    def __init__(self, cfg: DictConfig, data: Any, tokenizer: Any, info: dict[str, Any]) -> None:
        self.record = {**run_record(cfg, data, tokenizer), "pin": info.get("pin")}  # see recorded_pin
        self.info = info

    def check(self, ckpt: str | None) -> None:
        if ckpt is not None and Path(ckpt).is_file():  # a sharded checkpoint (a folder) is checked on load
            check_record(read_record(Path(ckpt)), self.record, ckpt)

    def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        checkpoint[RECORD_KEY] = self.record

    def on_load_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict[str, Any]) -> None:
        ckpt = str(getattr(trainer, "ckpt_path", None) or "the checkpoint")
        check_record(checkpoint.get(RECORD_KEY), self.record, ckpt)
        self.info["resumed_from"] = {"checkpoint": ckpt, "step": int(checkpoint.get("global_step", 0))}
