"""LoRA (peft): only adapter weights train, the reference is the same model with adapters disabled (no
copy), that pass equals the base model's, and the cached tables of a LoRA run equal a full run's."""

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from helpers import PAIRS, optim, pair_batch, tiny_model
from prefopt.scoring.logp_cache import weights_fingerprint
from prefopt.scoring.logps import response_logps
from prefopt.losses import DPOLoss, RMiPOLoss
from prefopt.models.setup import apply_lora, is_lora, prepare_for_training, save_policy
from prefopt.train.module import PreferenceModule

pytest.importorskip("peft")

LORA = OmegaConf.create({"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"})


def lora_model():
    return apply_lora(tiny_model(), LORA)


def logits(model, batch):
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def test_lora_trains_only_adapters_and_the_disabled_pass_is_the_base_model():
    base = tiny_model()
    module = PreferenceModule(lora_model(), DPOLoss(beta=0.5), **optim(lr=1e-2, warmup_ratio=0.0))
    assert is_lora(module.policy) and module.reference is None and module.frozen.adapters
    before = {k: v.clone() for k, v in module.policy.state_dict().items()}
    batch = pair_batch(PAIRS)
    trainer = L.Trainer(max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, train_dataloaders=DataLoader([batch] * 4, batch_size=None))

    after = module.policy.state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    adapters = {k for k in after if "lora_" in k}
    assert changed and changed <= adapters  # every base tensor is untouched
    assert any("lora_B" in k for k in changed)  # B starts at zero: the adapter now does something

    with module.frozen.scorer() as scorer:
        assert scorer is module.policy and not scorer.training
        torch.testing.assert_close(logits(scorer, batch), logits(base, batch))
    assert not torch.allclose(logits(module.policy, batch), logits(base, batch), atol=1e-4)  # adapters on again

    # the loss's reference log-probs are the base model's
    logps = module.pair_logps(batch)
    ref, _ = response_logps(base, batch["input_ids"], batch["attention_mask"], batch["score_mask"])
    n = len(PAIRS)
    torch.testing.assert_close(logps.ref_chosen, ref[:n])
    torch.testing.assert_close(logps.ref_rejected, ref[n:])
    assert logps.chosen.requires_grad and not torch.allclose(logps.chosen.detach(), logps.ref_chosen, atol=1e-4)


def test_marginal_reference_of_a_lora_policy_is_the_base_models():
    base = tiny_model()
    module = PreferenceModule(lora_model(), RMiPOLoss(marginal="reference"))
    assert module.reference is None
    with torch.no_grad():
        for p in (p for n, p in module.policy.named_parameters() if "lora_B" in n):
            p.normal_()  # adapters that change the output
    batch = pair_batch(PAIRS)
    logps = module.pair_logps(batch)
    marg, _ = response_logps(
        base, batch["marginal_input_ids"], batch["marginal_attention_mask"], batch["marginal_score_mask"]
    )
    torch.testing.assert_close(logps.marginal_chosen, marg[: len(PAIRS)])
    assert module.policy.training  # the frozen pass put the policy back in train mode


def test_lora_and_full_runs_share_the_starting_policys_fingerprint():
    lora = lora_model()
    assert weights_fingerprint(lora) == weights_fingerprint(tiny_model())
    with torch.no_grad():
        next(p for n, p in lora.named_parameters() if "lora_B" in n).add_(1.0)
    assert weights_fingerprint(lora) == weights_fingerprint(tiny_model())  # adapters are not the start
    assert weights_fingerprint(lora) != weights_fingerprint(tiny_model(seed=1))


def test_save_merges_adapters_into_a_plain_model(tmp_path):
    from transformers import AutoModelForCausalLM

    model = prepare_for_training(tiny_model(), OmegaConf.create({"lora": LORA}))
    with torch.no_grad():
        for p in (p for n, p in model.named_parameters() if "lora_B" in n):
            p.normal_(std=0.1)
    batch = pair_batch(PAIRS)
    expected = logits(model, batch)
    tok = type("Tok", (), {"save_pretrained": lambda self, folder: None})()
    save_policy(model, tok, tmp_path / "model")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "model")
    assert not is_lora(loaded)
    torch.testing.assert_close(logits(loaded, batch), expected, rtol=1e-4, atol=1e-4)


def test_shared_prompt_pass_of_a_lora_policy_equals_full_rows():
    from helpers import collated
    from prefopt.scoring.sharing import check_shared_prompt
    from prefopt.scoring.layout import pair_batch_logps

    model = lora_model()
    with torch.no_grad():
        for p in (p for n, p in model.named_parameters() if "lora_B" in n):
            p.normal_()
    batch = collated(PAIRS)
    shared, _ = pair_batch_logps(model, batch, share_prompt=True)
    rows, _ = pair_batch_logps(model, batch, share_prompt=False)
    torch.testing.assert_close(shared, rows, rtol=1e-5, atol=1e-5)
    assert check_shared_prompt(model, batch) is None
    with model.disable_adapter():
        assert check_shared_prompt(model, batch) is None


@pytest.mark.slow
@pytest.mark.parametrize("logp_cache", ["true", "false"])
def test_lora_run_end_to_end(cache_root, tmp_path, logp_cache):
    """`model.lora.r=4 loss=dpo` trains, evaluates against the adapter-disabled policy and saves a
    merged plain model; with and without the reference table."""
    import json

    from safetensors.torch import load_file

    from test_run import SMALL_SORT, run_cli

    proc = run_cli([*SMALL_SORT, "loss=dpo", "model.lora.r=4", "trainer.max_steps=6", "logger=none",
                    "checkpoint.enabled=false", f"logp_cache={logp_cache}", f"hydra.run.dir={tmp_path / 'run'}"],
                   cache_root, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "completed" and "eval/kl" in results["metrics"]
    assert results["info"]["logp_cache"]["used"] is (logp_cache == "true")
    saved = load_file(tmp_path / "run" / "model" / "model.safetensors")
    start = load_file(next(cache_root.glob("sort_sft/*/model.safetensors")))
    assert not any("lora" in k for k in saved) and set(saved) == set(start)
    assert max((saved[k] - start[k]).abs().max().item() for k in saved) > 0  # the merged adapters moved it
