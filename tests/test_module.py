"""PreferenceModule with each loss on the tiny model: finite loss, parameters change, and the
reference and marginal passes carry no gradient."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from helpers import PAIRS, pair_batch, tiny_model
from prefopt.losses import DPOLoss, IPOLoss, RMiPOLoss, SimPOLoss
from prefopt.module import PreferenceModule, warmup_cosine

LOSSES = {
    "dpo": lambda: DPOLoss(beta=0.1),
    "ipo": lambda: IPOLoss(beta=0.1),
    "simpo": lambda: SimPOLoss(beta=2.0, gamma_beta_ratio=0.5),
    "rmipo": lambda: RMiPOLoss(),
    "rmipo-ref": lambda: RMiPOLoss(marginal="reference"),
}


@pytest.mark.parametrize("name", list(LOSSES))
def test_training_changes_policy_not_reference(name):
    torch.manual_seed(0)
    module = PreferenceModule(tiny_model(), LOSSES[name](), lr=1e-2, warmup_ratio=0.0)
    before = {k: v.clone() for k, v in module.policy.state_dict().items()}
    ref_before = None if module.reference is None else {k: v.clone() for k, v in module.reference.state_dict().items()}
    batches = [pair_batch(PAIRS)] * 4
    trainer = L.Trainer(max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, train_dataloaders=DataLoader(batches, batch_size=None))
    loss = trainer.callback_metrics["train/loss"]
    assert torch.isfinite(loss)
    changed = [k for k, v in module.policy.state_dict().items() if not torch.equal(v, before[k])]
    assert len(changed) == len(before)  # every tensor moved
    if ref_before is not None:
        assert all(torch.equal(v, ref_before[k]) for k, v in module.reference.state_dict().items())


def test_reference_only_when_needed():
    assert PreferenceModule(tiny_model(), SimPOLoss()).reference is None
    assert PreferenceModule(tiny_model(), RMiPOLoss()).reference is None
    assert PreferenceModule(tiny_model(), RMiPOLoss(marginal="reference")).reference is not None
    ref = PreferenceModule(tiny_model(), DPOLoss()).reference
    assert ref is not None and not any(p.requires_grad for p in ref.parameters())


def test_marginal_pass_has_no_gradient():
    module = PreferenceModule(tiny_model(), RMiPOLoss())
    logps = module.pair_logps(pair_batch(PAIRS))
    assert logps.chosen.requires_grad
    assert not logps.marginal_chosen.requires_grad and not logps.marginal_rejected.requires_grad
    module = PreferenceModule(tiny_model(), DPOLoss())
    logps = module.pair_logps(pair_batch(PAIRS))
    assert not logps.ref_chosen.requires_grad


def test_reference_equals_policy_at_start():
    module = PreferenceModule(tiny_model(), DPOLoss())
    logps = module.pair_logps(pair_batch(PAIRS))
    torch.testing.assert_close(logps.chosen.detach(), logps.ref_chosen)


def test_warmup_cosine_schedule():
    assert warmup_cosine(0, 100, 10) == pytest.approx(0.1)
    assert warmup_cosine(9, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(10, 100, 10) == pytest.approx(1.0)
    assert warmup_cosine(55, 100, 10) == pytest.approx(0.5)  # halfway through the decay
    assert warmup_cosine(100, 100, 10, min_ratio=0.1) == pytest.approx(0.1)
