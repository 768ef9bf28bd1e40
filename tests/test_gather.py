"""After a sharded run rank 0 rebuilds the trained policy from its gathered state dict (prefopt.train.gather):
which strategies count as sharded, and the rebuild of plain and LoRA policies. The gathering itself is
a GPU collective (not runnable here)."""

import pytest
import torch
from omegaconf import OmegaConf

from helpers import PAIRS, pair_batch, tiny_model
from prefopt.train.gather import is_sharded, policy_entries, rebuild_policy
from prefopt.losses import DPOLoss
from prefopt.models.setup import prepare_for_training
from prefopt.train.module import PreferenceModule


def logits(model):
    b = pair_batch(PAIRS)
    with torch.no_grad():
        return model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits


def test_which_strategies_shard_the_policy():
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, SingleDeviceStrategy

    assert not is_sharded(SingleDeviceStrategy("cpu")) and not is_sharded(DDPStrategy())
    assert is_sharded(FSDPStrategy())
    deepspeed = type("DeepSpeedStrategy", (), {})
    assert is_sharded(type("DeepSpeedStrategy", (deepspeed,), {"zero_stage_3": True})())
    assert not is_sharded(type("DeepSpeedStrategy", (deepspeed,), {"zero_stage_3": False})())


@pytest.mark.parametrize("lora", [None, {"r": 4, "dropout": 0.0}])
def test_rebuild_from_a_module_state_dict_equals_the_trained_policy(lora):
    if lora:
        pytest.importorskip("peft")
    model_cfg = OmegaConf.create({"lora": lora})
    module = PreferenceModule(prepare_for_training(tiny_model(), model_cfg), DPOLoss())
    with torch.no_grad():
        for p in module.policy.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.1)  # "trained"
    state = module.state_dict()
    assert any(k.startswith("reference.") for k in state) is (lora is None)  # a LoRA module holds no copy
    rebuilt = rebuild_policy(prepare_for_training(tiny_model(), model_cfg), policy_entries(state))
    torch.testing.assert_close(logits(rebuilt), logits(module.policy))
    assert not torch.allclose(logits(rebuilt), logits(tiny_model()), atol=1e-4)


def test_a_state_that_does_not_fit_is_named():
    state = policy_entries(PreferenceModule(tiny_model(layers=2), DPOLoss()).state_dict())
    with pytest.raises(RuntimeError, match=r"does not fit the reloaded model: missing \[\], unexpected \['model.layers.1"):
        rebuild_policy(tiny_model(layers=1), state)
