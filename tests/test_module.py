"""PreferenceModule with each loss on the tiny model: finite loss, parameters change, and the
reference and marginal passes carry no gradient."""

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader

from helpers import PAIRS, collated, pair_batch, tiny_model, optim
from prefopt.losses import DPOLoss, IPOLoss, RMiPOLoss, SimPOLoss
from prefopt.train.module import PreferenceModule
from prefopt.train.optim import warmup_cosine

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
    module = PreferenceModule(tiny_model(), LOSSES[name](), **optim(lr=1e-2, warmup_ratio=0.0))
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


# ---- log-prob tables instead of frozen passes; the reference in checkpoints --------------------------


def live_tables(kind):
    """Tables for the PAIRS batch computed by a live pass of an unreleased module."""
    module = PreferenceModule(tiny_model(), RMiPOLoss(marginal="reference") if kind == "marginal" else DPOLoss())
    with torch.no_grad():
        logps = module.pair_logps(pair_batch(PAIRS))
    if kind == "reference":
        pair = (logps.ref_chosen, logps.ref_rejected), (logps.chosen_tokens, logps.rejected_tokens)
    else:
        pair = (logps.marginal_chosen, logps.marginal_rejected), (logps.marginal_chosen_tokens,
                                                                   logps.marginal_rejected_tokens)
    return torch.stack(pair[0], 1), torch.stack(pair[1], 1), logps


@pytest.mark.parametrize("kind,loss", [("reference", DPOLoss), ("reference", IPOLoss), ("marginal", RMiPOLoss)])
def test_tables_replace_the_frozen_pass_and_release_the_reference(kind, loss, monkeypatch):
    table, tokens, live = live_tables(kind)
    module = PreferenceModule(tiny_model(), loss(marginal="reference") if loss is RMiPOLoss else loss())
    assert module.reference is not None
    module.frozen.use_table(kind, "train", table, tokens)
    assert not module.frozen.release_reference()  # the eval split is not covered yet
    module.frozen.use_table(kind, "eval", table[:0], tokens[:0])
    assert module.frozen.release_reference() and module.reference is None
    calls = []
    import prefopt.scoring.frozen as frozen_file
    import prefopt.train.module as module_file

    for file, name in ((module_file, "pair_batch_logps"), (frozen_file, "response_logps"),
                       (frozen_file, "pair_batch_logps")):  # every pass goes through one of these
        real = getattr(file, name)
        monkeypatch.setattr(file, name, lambda model, *a, real=real, **k: calls.append(model) or real(model, *a, **k))
    got = module.pair_logps(pair_batch(PAIRS))
    assert calls == [module.policy]  # one forward: the policy's; no frozen pass
    for field in ("ref_chosen", "ref_rejected") if kind == "reference" else ("marginal_chosen", "marginal_rejected",
                                                                               "marginal_chosen_tokens"):
        torch.testing.assert_close(getattr(got, field), getattr(live, field))
    assert torch.isfinite(module.loss_fn(got).losses).all()


def test_table_lookup_follows_the_pair_index():
    table, tokens, live = live_tables("reference")
    module = PreferenceModule(tiny_model(), DPOLoss())
    module.frozen.use_table("reference", "train", table, tokens)
    batch = pair_batch(PAIRS[::-1])  # the same pairs in reverse order, with their dataset indices
    batch["index"] = torch.tensor([2, 1, 0])
    got = module.pair_logps(batch)
    torch.testing.assert_close(got.ref_chosen, live.ref_chosen.flip(0))
    torch.testing.assert_close(got.ref_rejected, live.ref_rejected.flip(0))


def test_a_table_that_does_not_fit_the_batch_is_an_error():
    table, tokens, _ = live_tables("reference")
    module = PreferenceModule(tiny_model(), DPOLoss())
    module.frozen.use_table("reference", "train", table, tokens + 1)
    with pytest.raises(RuntimeError, match="other token counts"):
        module.pair_logps(pair_batch(PAIRS))
    module.frozen.use_table("reference", "train", table[:2], tokens[:2])
    with pytest.raises(RuntimeError, match="has 2 pairs but the batch asks for pair index 2"):
        module.pair_logps(pair_batch(PAIRS))


def test_eval_split_uses_its_own_table():
    table, tokens, _ = live_tables("reference")
    module = PreferenceModule(tiny_model(), DPOLoss())
    module.frozen.use_table("reference", "train", table, tokens)
    module.frozen.use_table("reference", "eval", table + 5.0, tokens)
    module.frozen.release_reference()
    got = module.pair_logps(pair_batch(PAIRS), split="eval")
    torch.testing.assert_close(got.ref_chosen, table[:, 0] + 5.0)


def test_checkpoints_leave_the_reference_out_and_resume_fills_it_in():
    module = PreferenceModule(tiny_model(), DPOLoss())
    checkpoint = {"state_dict": module.state_dict()}
    assert any(k.startswith("reference.") for k in checkpoint["state_dict"])
    module.on_save_checkpoint(checkpoint)
    assert not any(k.startswith("reference.") for k in checkpoint["state_dict"])
    fresh = PreferenceModule(tiny_model(seed=1), DPOLoss())
    fresh.on_load_checkpoint(checkpoint)
    fresh.load_state_dict(checkpoint["state_dict"])  # strict: the reference keys are filled in
    assert all(torch.equal(v, module.policy.state_dict()[k]) for k, v in fresh.policy.state_dict().items())
    released = PreferenceModule(tiny_model(), SimPOLoss())
    old = {"state_dict": {**released.state_dict(), "reference.lm_head.weight": torch.zeros(1)}}
    released.on_load_checkpoint(old)  # an older checkpoint's reference is dropped when none is held
    released.load_state_dict(old["state_dict"])


def test_marginal_rows_are_start_plus_response_padded_to_the_longest_response():
    """The collator's marginal rows hold no prompt token: [start..., response], right-padded to the
    longest response of the batch, so the marginal pass costs S + max response length per row."""
    from prefopt.data.collate import PairCollator
    from prefopt.scoring.marginal import MarginalRows

    items = [
        {"prompt_ids": [1, 5, 6, 7, 8, 9], "chosen_ids": [10, 11, 2], "rejected_ids": [12, 2], "index": 0},
        {"prompt_ids": [1, 5], "chosen_ids": [13, 14, 15, 16, 2], "rejected_ids": [17, 2], "index": 1},
    ]
    b = PairCollator(pad_id=0, marginal=MarginalRows([1, 20]))(items)
    assert b["marginal_input_ids"].shape == (4, 2 + 5)  # start (2) + longest response (5)
    assert b["marginal_input_ids"][1].tolist() == [1, 20, 13, 14, 15, 16, 2]
    assert b["marginal_input_ids"][2].tolist() == [1, 20, 12, 2, 0, 0, 0]
    assert b["marginal_score_mask"][2].tolist() == [0, 0, 1, 1, 0, 0, 0]
    prompt_tokens = {5, 6, 7, 8, 9}
    assert not prompt_tokens & set(b["marginal_input_ids"].flatten().tolist())
    assert b["input_ids"].shape[1] == 9  # the full rows: longest prompt + response


def test_shared_prompt_training_matches_full_rows():
    """Four DPO steps with each prompt run once end at the weights of four steps on full rows."""
    weights = []
    for share in (True, False):
        module = PreferenceModule(tiny_model(), DPOLoss(), **optim(lr=1e-2, warmup_ratio=0.0), share_prompt=share)
        assert module.frozen.shares_prompt() is share
        batch = collated(PAIRS)
        trainer = L.Trainer(max_steps=4, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False, accelerator="cpu")
        trainer.fit(module, train_dataloaders=DataLoader([batch] * 4, batch_size=None))
        weights.append({k: v.clone() for k, v in module.policy.state_dict().items()})
    for k in weights[0]:
        torch.testing.assert_close(weights[0][k], weights[1][k], rtol=1e-4, atol=1e-5)


def test_no_shared_prompt_under_activation_checkpointing_or_a_sharded_strategy():
    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy

    model = tiny_model()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert not PreferenceModule(model, DPOLoss()).frozen.shares_prompt()
    for strategy, expected in ((FSDPStrategy(), False), (DDPStrategy(), "auto")):
        module = PreferenceModule(tiny_model(), DPOLoss())
        module._trainer = type("T", (), {"strategy": strategy})()
        assert module.frozen.shares_prompt() == expected


def test_adamw_is_fused_and_steps_like_the_per_tensor_loop():
    """The fused kernel on CPU; one step moves the weights as the default implementation does."""
    module = PreferenceModule(tiny_model(), SimPOLoss(), **optim(lr=1e-2, warmup_ratio=0.0))
    module._trainer = type("T", (), {"estimated_stepping_batches": 10, "strategy": object()})()
    opt = module.configure_optimizers()["optimizer"]
    assert opt.defaults["fused"] is True
    loop = PreferenceModule(tiny_model(), SimPOLoss(), **optim(lr=1e-2, warmup_ratio=0.0))
    reference = torch.optim.AdamW(loop.policy.parameters(), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.0)
    for m, o in ((module, opt), (loop, reference)):
        m.loss_fn(m.pair_logps(pair_batch(PAIRS))).losses.mean().backward()
        o.step()
    for a, b in zip(module.policy.parameters(), loop.policy.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_cuda_graph_setting_leaves_cpu_training_unchanged():
    """model.compile=reduce-overhead makes AdamW capturable on CUDA parameters only: on the CPU the
    optimizer is the same fused AdamW, not capturable, and a step moves the weights bit for bit alike."""
    stepped = []
    for setting in (False, "reduce-overhead"):
        torch.manual_seed(0)
        module = PreferenceModule(tiny_model(), SimPOLoss(), **optim(lr=1e-2, warmup_ratio=0.0),
                                  compile_setting=setting)
        module._trainer = type("T", (), {"estimated_stepping_batches": 10, "strategy": object()})()
        opt = module.configure_optimizers()["optimizer"]
        assert opt.defaults["fused"] is True and opt.defaults["capturable"] is False
        module.loss_fn(module.pair_logps(pair_batch(PAIRS))).losses.mean().backward()
        opt.step()
        stepped.append([p.detach().clone() for p in module.policy.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*stepped))


def test_auto_checks_the_shared_pass_once_and_falls_back_when_it_does_not_fit(monkeypatch, capsys):
    import prefopt.scoring.shared as logps_file

    long_pairs = [([1] + [5 + i % 7 for i in range(20)], [8, 9, 2], [10, 2]), ([1] + [4] * 17, [12, 2], [13, 14, 2])]
    batch = collated(long_pairs)
    good = PreferenceModule(tiny_model(), DPOLoss())
    good.pair_logps(batch)
    assert good.frozen.shares_prompt() is True  # checked on the first batch, then shared

    real = logps_file.shared_prompt_logps
    monkeypatch.setattr(logps_file, "shared_prompt_logps", lambda *a, **k: (real(*a, **k)[0] + 1.0, real(*a, **k)[1]))
    bad = PreferenceModule(tiny_model(), DPOLoss())
    got = bad.pair_logps(batch)
    assert bad.frozen.shares_prompt() is False
    assert "does not reproduce LlamaForCausalLM's log-probs (per-token log-probs differ by up to 1" in capsys.readouterr().out
    expected = good.pair_logps({k: v for k, v in batch.items() if not k.startswith(("prompt_", "response_"))})
    torch.testing.assert_close(got.chosen, expected.chosen)


def test_validation_metrics_are_batch_size_weighted_epoch_means():
    """val/* is logged once per epoch (EpochMeans), as the mean over pairs: two batches of 3 and 1
    pairs with per-batch mean losses a and b give (3a + b) / 4, not (a + b) / 2."""
    from prefopt.train.module import EpochMeans

    means = EpochMeans()
    means.add({"loss": torch.tensor(1.0), "acc": torch.tensor(True)}, 3)
    means.add({"loss": torch.tensor(5.0), "acc": torch.tensor(False)}, 1)
    assert means.means()["loss"].item() == pytest.approx(2.0)  # (3·1 + 5) / 4
    assert means.means()["acc"].item() == pytest.approx(0.75)
    assert EpochMeans().means() == {}

    torch.manual_seed(0)
    module = PreferenceModule(tiny_model(), SimPOLoss(beta=2.0), **optim(lr=1e-2, warmup_ratio=0.0))  # DPO starts at log 2 everywhere
    big, small = pair_batch(PAIRS), pair_batch(PAIRS[:1])
    with torch.no_grad():
        per_batch = [module.loss_fn(module.pair_logps(b, "eval")).losses.mean().item() for b in (big, small)]
    trainer = L.Trainer(logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.validate(module, dataloaders=DataLoader([big, small], batch_size=None), verbose=False)
    expected = (3 * per_batch[0] + per_batch[1]) / 4
    assert per_batch[0] != pytest.approx(per_batch[1])  # the weighting matters for this check
    assert trainer.callback_metrics["val/loss"].item() == pytest.approx(expected, rel=1e-6)
