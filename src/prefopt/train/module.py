"""PreferenceModule: the LightningModule that trains a causal LM on preference pairs.

It runs the policy's forward pass and knows no loss by name: the loss declares what it needs
(`needs_reference`, `needs_marginal`, `marginal_source`) and turns a `PairLogps` into per-pair losses,
rewards and metrics. Everything on the frozen side (the reference copy or LoRA's adapters-disabled
pass, the marginal, the cached tables that replace them, whether prompts are shared) belongs to
`self.frozen`, a prefopt.scoring.frozen.FrozenScorers, which the module asks for the `ref_*` and
`marginal_*` log-probs. The reference copy is the module's child `reference` (placed, converted and
sharded with it); it never goes into checkpoints (it is rebuilt from the starting policy).
`progress()` (the share of training a scheduled loss sees) counts optimizer steps against
`trainer.estimated_stepping_batches`. A resume may change optim.lr (a diverged run going on from
last-good.ckpt): `on_train_start` scales the optimizer and schedule Lightning restored to this run's lr.
Exercised by `pytest tests/test_module.py tests/test_frozen.py tests/test_progress.py tests/test_dropout.py
tests/test_guards.py` and
`python src/run.py loss=dpo|ipo|simpo|rmipo`.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch
from torch import Tensor

from prefopt.errors import ConfigError
from prefopt.scoring.frozen import FrozenScorers
from prefopt.scoring.layout import pair_batch_logps
from prefopt.train.checkpointing import fill_frozen, trainable_only
from prefopt.contracts.predicates import is_sharded
from prefopt.losses import PairLogps, PreferenceLoss
from prefopt.log import get_logger
from prefopt.train.optim import Factory, adamw_options, default_factories, follow_configured_lr, takes

log = get_logger()


class EpochMeans:
    """Batch-size-weighted means of an epoch's metrics, accumulated exactly as Lightning's `on_epoch`
    logging accumulates them (value x batch size summed from a float32 zero, divided by the summed
    batch sizes), so logging the means once gives the numbers per-batch logging gave."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.count = 0

    def add(self, metrics: dict[str, Tensor], batch_size: int) -> None:
        for key, value in metrics.items():
            value = value.detach()
            if value.dtype not in (torch.float32, torch.float64):
                value = value.float()
            self.sums[key] = self.sums.get(key, torch.tensor(0.0)) + value * batch_size
        self.count += batch_size

    def means(self) -> dict[str, Tensor]:
        return {key: total / self.count for key, total in self.sums.items()} if self.count else {}


class PreferenceModule(L.LightningModule):
    """Trains `policy` with `loss`; its frozen side (`self.frozen`) builds a reference only when the loss needs one."""

    def __init__(
        self,
        policy: torch.nn.Module,
        loss: PreferenceLoss,
        reference: torch.nn.Module | None = None,
        share_prompt: bool | str = "auto",
        optimizer: Factory | None = None,
        scheduler: Factory | None = None,
        compile_setting: Any = False,
    ) -> None:
        """`optimizer(param_groups)` and `scheduler(optimizer, total_steps=...)` come from `cfg.optim`
        (prefopt.train.optim: `optim_factories`, or `default_factories(lr=...)` for code that builds a module
        directly); without them, conf/train.yaml's defaults (AdamW, warmup + cosine, lr 5e-4).
        `compile_setting`: `model.compile` (reduce-overhead makes AdamW capturable on CUDA, `adamw_options`)."""
        super().__init__()
        self.compile_setting = compile_setting
        self.policy = policy
        self.loss_fn = loss
        defaults = default_factories()
        self.make_optimizer, self.make_scheduler = optimizer or defaults[0], scheduler or defaults[1]
        # the reference copy (when the loss needs one) becomes this module's child `reference`
        self.frozen = FrozenScorers(self, policy, loss, share_prompt, reference)
        self._total_steps: int | None = None  # optimizer steps of this fit, set by configure_optimizers
        self._configured_lrs: list[float] = []  # each group's lr as configured, before a resume restores the saved
        self._val_means = EpochMeans()  # this validation epoch's metrics (on_validation_epoch_end logs them)

    def train(self, mode: bool = True) -> "PreferenceModule":
        super().train(mode)
        if self.reference is not None:
            self.reference.eval()  # the reference never leaves eval mode
        return self

    def pair_logps(self, batch: dict[str, Tensor], split: str = "train") -> PairLogps:
        """Policy log-probs of chosen and rejected in one forward, plus the reference and marginal ones
        the loss declares it needs (from `self.frozen`; `split` "train" | "eval" picks its tables)."""
        n = batch["index"].shape[0]
        share = self.frozen.sharing(batch)
        logps, tokens = pair_batch_logps(self.policy, batch, share)
        return PairLogps(chosen=logps[:n], rejected=logps[n:], chosen_tokens=tokens[:n], rejected_tokens=tokens[n:],
                         **self.frozen.logps(batch, split, tokens, share))

    def progress(self) -> float:
        """Share of training done, by optimizer steps: global step / (total steps - 1), so 0 during the
        first optimizer step and 1.0 during the last (all micro-batches of one step share its value).
        The total is Lightning's `estimated_stepping_batches` (max_steps, or epochs × batches per epoch ÷
        accumulation), fixed when the optimizer is configured; 0 before that."""
        trainer, total = self._trainer, self._total_steps
        if trainer is None or not total:
            return 0.0
        return 1.0 if total <= 1 else min(1.0, trainer.global_step / (total - 1))

    def _logs_this_step(self) -> bool:
        """Whether a training step's metrics would reach the loggers (every `log_every_n_steps`, and the
        last step for the final metrics). Lightning's `self.log` costs ~0.2 ms a call, about 10% of a
        small model's step, so the other steps skip it."""
        trainer = self._trainer
        connector = getattr(trainer, "_logger_connector", None)
        if trainer is None or connector is None or connector.should_update_logs:
            return True
        return bool(self._total_steps and trainer.global_step + 1 >= self._total_steps)

    def _step(self, batch: dict[str, Tensor], stage: str) -> Tensor:
        logps = self.pair_logps(batch, split="train" if stage == "train" else "eval")
        out = self.loss_fn(logps, progress=self.progress())
        loss = out.losses.mean()
        train = stage == "train"
        if train and not self._logs_this_step():
            return loss
        margins = out.chosen_rewards - out.rejected_rewards
        metrics = {
            "loss": loss.detach(),
            "rewards/chosen": out.chosen_rewards.mean(),
            "rewards/rejected": out.rejected_rewards.mean(),
            "rewards/margins": margins.mean(),
            "rewards/accuracies": (margins > 0).float().mean(),
            "logps/chosen": logps.chosen.detach().mean(),
            "logps/rejected": logps.rejected.detach().mean(),
            **{k: v.detach() for k, v in out.metrics.items()},
        }
        if not train:  # logged once at the epoch's end (on_validation_epoch_end)
            self._val_means.add(metrics, logps.chosen.shape[0])
            return loss
        n = logps.chosen.shape[0]
        self.log_dict({f"train/{k}": v for k, v in metrics.items()}, on_step=True, on_epoch=False, batch_size=n)
        self.log("train_loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=False, batch_size=n, logger=False)
        return loss

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def on_validation_epoch_start(self) -> None:
        self._val_means = EpochMeans()

    def on_validation_epoch_end(self) -> None:
        """The epoch's `val/*` means in one log call: Lightning's `self.log` costs about 1 ms a metric
        (it moves its whole accumulator state each call), so logging ~10 metrics every validation batch
        took ~5% of a sort run; the numbers are the same (`EpochMeans`)."""
        means = self._val_means.means()
        if means:
            self.log_dict({f"val/{k}": v for k, v in means.items()}, on_step=False, on_epoch=True)
            self.log("val_loss", means["loss"], prog_bar=True, on_step=False, on_epoch=True, logger=False)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Leave the frozen reference out: it is the starting policy, rebuilt when a run resumes; a LoRA
        policy keeps only its adapters (prefopt.train.checkpointing; not under FSDP/ZeRO-3, which save shards)."""
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith("reference.")]:
            del state[key]
        if self._trainer is None or not is_sharded(self._trainer.strategy):
            trainable_only(self.policy, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Fill in the reference this run holds (or drop one an older checkpoint carries)."""
        state = checkpoint.get("state_dict", {})
        for key in [k for k in state if k.startswith("reference.")]:
            del state[key]
        if self.reference is not None:
            state.update({f"reference.{k}": v for k, v in self.reference.state_dict().items()})
        fill_frozen(self.policy, checkpoint)  # a LoRA checkpoint's frozen base weights: this run's own

    def on_train_start(self) -> None:
        """A resume may change optim.lr (prefopt.train.resume.RESUMABLE_KEYS): Lightning has restored the
        checkpoint's optimizer and schedule, with the lr it was saved with; scale them to this run's."""
        trainer = self.trainer
        if not trainer.optimizers or not self._configured_lrs:
            return
        schedulers = trainer.lr_scheduler_configs
        changed = follow_configured_lr(trainer.optimizers[0], schedulers[0].scheduler if schedulers else None,
                                       self._configured_lrs)
        if changed:
            log.info(f"optim.lr {changed[0][0]:g} -> {changed[0][1]:g} on resume: the schedule goes on from step "
                     f"{trainer.global_step} with the new peak")

    def _deepspeed(self) -> bool:
        """Whether DeepSpeed runs the fit (it steps the optimizer on its own partitions)."""
        trainer = self._trainer
        return trainer is not None and "deepspeed" in type(trainer.strategy).__name__.lower()

    def _fused_adam(self, params: list[Tensor]) -> bool:
        """The fused AdamW kernel (what HF Trainer and so TRL use by default): on one CPU thread 15 ms a
        step for 21.7M parameters against 130-145 ms for the default per-tensor loop. Not under DeepSpeed,
        which steps the optimizer on its own partitions."""
        if self._deepspeed():
            return False
        return bool(params) and all(
            p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float16, torch.bfloat16)
            for p in params
        )

    def training_length(self) -> int:
        """Optimizer steps this fit takes (`trainer.estimated_stepping_batches`); a ConfigError when it
        cannot be known (no step or epoch limit, or data of unknown length without max_steps), which the
        learning-rate schedule and any loss that `needs_progress` require."""
        total = self.trainer.estimated_stepping_batches
        if math.isfinite(total) and total > 0:
            return int(total)
        users = "the learning-rate schedule" + (
            f" and loss {self.loss_fn.name} (its settings follow the share of training done)"
            if getattr(self.loss_fn, "needs_progress", False) else "")
        raise ConfigError(f"the number of optimizer steps cannot be known (trainer.max_steps="
                          f"{self.trainer.max_steps}, trainer.max_epochs={self.trainer.max_epochs}), and "
                          f"{users} need it: set trainer.max_steps or trainer.max_epochs")

    def configure_optimizers(self):
        """The configured optimizer over two groups: matrices, and the rest (biases, norms) without
        weight decay, with `adamw_options` where it takes them (fused; capturable for CUDA graphs); the
        schedule steps per optimizer step."""
        decay, no_decay = [], []
        for p in self.policy.parameters():
            if p.requires_grad:
                (decay if p.ndim >= 2 else no_decay).append(p)
        params = decay + no_decay
        options = adamw_options(self.compile_setting, self._fused_adam(params), {p.device.type for p in params},
                                stepped_elsewhere=self._deepspeed())
        kwargs = {key: value for key, value in options.items() if takes(self.make_optimizer, key)}
        optimizer = self.make_optimizer([{"params": decay}, {"params": no_decay, "weight_decay": 0.0}], **kwargs)
        self._configured_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        total = self._total_steps = self.training_length()
        schedule = self.make_scheduler(optimizer, total_steps=total)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
