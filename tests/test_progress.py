"""`progress`, the share of training a scheduled loss sees, follows the real length of training:
optimizer steps done / (total - 1) with the total from `trainer.estimated_stepping_batches`, so runs
by epochs and with gradient accumulation reach 1.0 at their last step; a run of unknown length refuses."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from helpers import PAIRS, collated, tiny_model, optim
from prefopt.errors import ConfigError
from prefopt.losses.controls import SimPOAnnealedLoss
from prefopt.train.module import PreferenceModule


class RecordingAnneal(SimPOAnnealedLoss):
    """The annealed SimPO, recording the progress and the margin ratio of every call."""

    def compute(self, logps, progress=0.0):
        out = super().compute(logps, progress)
        self.seen.append((round(progress, 6), round(float(out.metrics["margin/mean"]), 6)))
        return out


def fit(batches: int, **trainer_args) -> tuple[PreferenceModule, L.Trainer]:
    loss = RecordingAnneal(beta=2.0, gamma_beta_ratio=1.6, gamma_beta_ratio_end=0.3)
    loss.seen = []
    module = PreferenceModule(tiny_model(), loss, **optim(lr=1e-3))
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, **trainer_args)
    trainer.fit(module, train_dataloaders=DataLoader([collated(PAIRS)] * batches, batch_size=None))
    return module, trainer


@pytest.mark.slow
def test_epochs_with_accumulation_reach_one_at_the_last_step():
    """10 batches an epoch, accumulation 4, 2 epochs: ceil(10/4) = 3 steps an epoch (after batches 4, 8
    and the epoch's last 2), 6 steps in all, so progress is step/5 = 0, .2, .4, .6, .8, 1 and every
    micro-batch of a step sees its step's value. The margin ratio goes 1.6 -> 0.3 linearly with it."""
    module, trainer = fit(10, max_epochs=2, max_steps=-1, accumulate_grad_batches=4)
    assert trainer.global_step == 6 and module._total_steps == 6
    steps = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    micro = [4, 4, 2, 4, 4, 2]
    assert [p for p, _ in module.loss_fn.seen] == [p for p, n in zip(steps, micro) for _ in range(n)]
    ratios = dict(module.loss_fn.seen)
    assert ratios[0.0] == 1.6 and ratios[0.4] == pytest.approx(1.6 - 1.3 * 0.4) and ratios[1.0] == 0.3


@pytest.mark.slow
def test_max_steps_shorter_than_the_epochs_sets_the_total():
    """max_steps=4 under 3 epochs of 5 batches: min(4, 5 * 3) = 4 steps, progress 0, 1/3, 2/3, 1."""
    module, trainer = fit(5, max_epochs=3, max_steps=4)
    assert trainer.global_step == 4 and module._total_steps == 4
    assert [p for p, _ in module.loss_fn.seen] == [0.0, 0.333333, 0.666667, 1.0]


@pytest.mark.slow
def test_a_run_of_unknown_length_refuses_a_scheduled_loss():
    with pytest.raises(ConfigError, match=r"the number of optimizer steps cannot be known \(trainer.max_steps=-1, "
                                          r"trainer.max_epochs=-1\), and the learning-rate schedule and loss "
                                          r"simpo_anneal \(its settings follow the share of training done\) need it"):
        fit(3, max_epochs=-1, max_steps=-1)


def test_progress_is_zero_before_the_optimizer_is_configured():
    module = PreferenceModule(tiny_model(), SimPOAnnealedLoss())
    assert module.progress() == 0.0
    module._trainer = type("T", (), {"global_step": 0, "strategy": object()})()
    module._total_steps = 1  # a one-step run is at its last step from the start
    assert module.progress() == 1.0
    assert torch.is_tensor(module.loss_fn(module.pair_logps(collated(PAIRS)), progress=1.0).losses)
