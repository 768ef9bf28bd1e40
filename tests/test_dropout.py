"""No dropout noise in the log-probs: `model.disable_dropout` (default true) zeroes every dropout of the
policy, LoRA's included, and the frozen passes and the live marginal pass never drop out whatever it says.
The models here are configured with dropout 0.1 (attention, residual, embedding, LoRA)."""

import torch
from omegaconf import OmegaConf
from transformers import LlamaConfig, LlamaForCausalLM

from helpers import BOS, EOS, PAD, PAIRS, VOCAB, pair_batch
from prefopt.losses import RMiPOLoss
from prefopt.models.setup import disable_dropout, prepare_for_training
from prefopt.train.module import PreferenceModule


def dropout_model(seed: int = 0) -> LlamaForCausalLM:
    """A tiny Llama whose attention drops out 10% of its weights while training."""
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64,
                         attention_dropout=0.1, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def prepared(disable: bool, lora: bool = False):
    cfg = {"disable_dropout": disable, "lora": {"r": 4 if lora else None, "alpha": 8, "dropout": 0.1,
                                                "target_modules": ["q_proj", "v_proj"]}}
    return prepare_for_training(dropout_model(), OmegaConf.create(cfg))


def two_passes(module: PreferenceModule):
    module.train()
    batch = pair_batch(PAIRS)
    torch.manual_seed(1)
    first = module.pair_logps(batch)
    torch.manual_seed(2)  # a different dropout mask, if any dropout is left
    return first, module.pair_logps(batch)


def test_disable_dropout_makes_two_training_passes_identical():
    for lora in (False, True):
        module = PreferenceModule(prepared(True, lora), RMiPOLoss(), share_prompt=False)
        a, b = two_passes(module)
        assert torch.equal(a.chosen, b.chosen) and torch.equal(a.rejected, b.rejected)
        assert torch.equal(a.marginal_chosen, b.marginal_chosen)


def test_with_dropout_kept_the_policy_pass_is_noisy_but_the_marginal_and_frozen_passes_are_not():
    module = PreferenceModule(prepared(False), RMiPOLoss(), share_prompt=False)
    a, b = two_passes(module)
    assert not torch.equal(a.chosen, b.chosen)  # the dropout is really there (p = 0.1 kept)
    assert torch.equal(a.marginal_chosen, b.marginal_chosen) and torch.equal(a.marginal_rejected, b.marginal_rejected)
    assert module.policy.training  # the marginal pass put the policy back in training mode
    for lora in (False, True):  # the frozen passes: reference copy, or LoRA's adapter-disabled policy
        ref = PreferenceModule(prepared(False, lora), RMiPOLoss(marginal="reference"), share_prompt=False)
        a, b = two_passes(ref)
        assert torch.equal(a.marginal_chosen, b.marginal_chosen)


def test_disable_dropout_counts_and_zeroes_modules_and_attention_rates():
    model = prepared(False, lora=True)
    rates = [m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert rates == [0.1, 0.1]  # LoRA's on q_proj and v_proj
    assert disable_dropout(model) == 3  # the two LoRA dropouts and the attention's attention_dropout
    assert all(m.p == 0 for m in model.modules() if isinstance(m, torch.nn.Dropout))
    assert all(getattr(m, "attention_dropout", 0.0) == 0.0 for m in model.modules())
    assert model.config.attention_dropout == 0.1  # what gets saved is untouched


def test_every_model_config_disables_dropout_by_default():
    from pathlib import Path

    conf = Path(__file__).resolve().parents[1] / "conf" / "model"
    for path in conf.glob("*.yaml"):
        assert OmegaConf.load(path).disable_dropout is True, path.name
