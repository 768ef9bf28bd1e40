"""A training loss that sits at log 2 (a sigmoid loss with β or lr too small to move it) gets one warning
naming loss.beta and optim.lr (prefopt.train.stall.LossStallWarning); a loss that moves, or one that
declares no stall value (IPO), gets none."""

import math

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from helpers import PAIRS, optim, pair_batch, tiny_model
from prefopt.losses import DPOLoss, IPOLoss, SimPOLoss
from prefopt.train.module import PreferenceModule
from prefopt.config.schema import OptimSchema, advised_range
from prefopt.train.stall import LossStallWarning, stall_message

torch.set_num_threads(1)


def train(loss, lr, max_steps, accumulate=1, **watch):
    module = PreferenceModule(tiny_model(), loss, **optim(lr=lr, warmup_ratio=0.0))
    trainer = L.Trainer(max_steps=max_steps, accumulate_grad_batches=accumulate, logger=False,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        callbacks=[LossStallWarning(lr_range=advised_range(OptimSchema, "lr"), **watch)])
    batches = [pair_batch(PAIRS)] * (max_steps * accumulate)
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))


def warnings(err):
    return [line for line in err.splitlines() if "has not moved" in line]


def test_the_message_names_the_value_the_steps_and_what_to_raise():
    line = stall_message(math.log(2), 1e-3, 0, 50, DPOLoss(beta=1e-9), 5e-4, advised_range(OptimSchema, "lr"))
    assert line == ("warning: the training loss has not moved from 0.6931 = log 2 (within 0.001) in steps 1-50: "
                    "the policy is not learning from the pairs; loss.beta=1e-09 (usual 0.01 to 1) or "
                    "optim.lr=0.0005 (usual 1e-08 to 0.01) is probably too small, try raising it")


@pytest.mark.slow
@pytest.mark.parametrize("loss,lr,accumulate", [(DPOLoss(beta=1e-9), 1e-3, 1), (DPOLoss(beta=0.1), 1e-12, 2),
                                                (SimPOLoss(beta=1e-9), 1e-3, 1)])
def test_a_loss_stuck_at_log_2_is_named_once(loss, lr, accumulate, capsys):
    train(loss, lr, max_steps=6, accumulate=accumulate, steps=4)
    (line,) = warnings(capsys.readouterr().err)
    assert "from 0.6931 = log 2 (within 0.001) in steps 1-4" in line
    assert f"loss.beta={loss.beta:g} (usual" in line and f"optim.lr={lr:g} (usual" in line


@pytest.mark.slow
def test_a_run_shorter_than_the_window_is_judged_whole(capsys):
    train(DPOLoss(beta=1e-9), 1e-3, max_steps=5, steps=50)
    (line,) = warnings(capsys.readouterr().err)
    assert "in steps 1-5" in line
    train(DPOLoss(beta=1e-9), 1e-3, max_steps=3, steps=50)  # under min_steps: DPO's first steps are log 2 anyway
    assert warnings(capsys.readouterr().err) == []


@pytest.mark.slow
@pytest.mark.parametrize("loss", [DPOLoss(beta=0.5), IPOLoss(beta=1e-9)])
def test_a_loss_that_moves_or_declares_no_stall_value_gets_no_warning(loss, capsys):
    train(loss, 1e-2, max_steps=6, steps=4)
    assert warnings(capsys.readouterr().err) == []
