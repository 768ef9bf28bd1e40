"""Cached frozen log-probs (prefopt.scoring.logp_cache): cached equals live, a second run hits the cache and
holds no reference model, and a changed dataset, model or truncation setting misses it."""

import json
import random

import pytest
import torch
from omegaconf import OmegaConf

from prefopt.data.datamodule import PreferenceDataModule
from prefopt.scoring.logp_cache import attach_caches, weights_fingerprint
from prefopt.losses import DPOLoss, IPOLoss, RMiPOLoss, SimPOLoss
from prefopt.models.load import build_tiny
from prefopt.train.module import PreferenceModule
from prefopt.tasks.sort import build_sort_tokenizer

CFG = OmegaConf.create({"logp_cache": True, "trainer": {"accelerator": "cpu", "precision": "32-true"}})


def sort_rows(n, seed=0):
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(3, 7)))
        good = "".join(sorted(digits))
        rows.append({"prompt": digits + ">", "chosen": good, "rejected": good + rng.choice("0123456789")})
    return rows


@pytest.fixture(scope="module")
def tok():
    return build_sort_tokenizer()


def model(tok, seed=0):
    return build_tiny(tok, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                      max_position_embeddings=64, seed=seed)


def data(tok, train=None, max_length=24, batch_size=4, marginal_context="start_token"):
    dm = PreferenceDataModule(train or sort_rows(10), sort_rows(5, seed=1), tok, max_length=max_length,
                              max_prompt_length=12, batch_size=batch_size, eval_batch_size=3, seed=0,
                              no_prompt_marker=">", marginal_context=marginal_context)
    dm.setup()
    return dm


def live_frozen_logps(module, dm, split, kind):
    """(N, 2) logps and tokens of the live frozen pass, batch by batch (other batches than the cache's)."""
    n = len(dm.train_dataset if split == "train" else dm.eval_dataset)
    out, toks = torch.zeros(n, 2), torch.zeros(n, 2, dtype=torch.long)
    with torch.no_grad():
        for batch in dm.loader(split, batch_size=2):
            lp = module.pair_logps(batch, split=split)
            if kind == "reference":
                pair, counts = (lp.ref_chosen, lp.ref_rejected), (lp.chosen_tokens, lp.rejected_tokens)
            else:
                pair = (lp.marginal_chosen, lp.marginal_rejected)
                counts = (lp.marginal_chosen_tokens, lp.marginal_rejected_tokens)
            out[batch["index"]] = torch.stack(pair, 1)
            toks[batch["index"]] = torch.stack(counts, 1)
    return out, toks


@pytest.mark.parametrize("kind,make_loss,context", [
    ("reference", DPOLoss, "start_token"),
    ("marginal", lambda: RMiPOLoss(marginal="reference", marginal_context="start_token"), "start_token"),
    ("marginal", lambda: RMiPOLoss(marginal="reference", marginal_context="none"), "none"),
])
def test_cached_equals_live_and_the_second_run_hits(tok, tmp_path, kind, make_loss, context):
    """For the marginal, with each context of its rows (marginal_context: start token + '>' and all n
    tokens, or the response alone and n-1 tokens): the table holds what the live frozen pass gives."""
    dm = data(tok, marginal_context=context)
    live = PreferenceModule(model(tok), make_loss())
    first = PreferenceModule(model(tok), make_loss())
    info = attach_caches(CFG, first.frozen, dm, tmp_path)["logp_cache"]
    assert info["used"] and info["reference_released"] and info["tables"][kind]["status"] == "built"
    assert first.reference is None
    for split in ("train", "eval"):
        expected, counts = live_frozen_logps(live, dm, split, kind)
        torch.testing.assert_close(getattr(first, f"_table_{kind}_{split}_logps"), expected, rtol=1e-5, atol=1e-5)
        assert torch.equal(getattr(first, f"_table_{kind}_{split}_tokens"), counts)
    second = PreferenceModule(model(tok), make_loss())
    again = attach_caches(CFG, second.frozen, dm, tmp_path)["logp_cache"]
    assert again["tables"][kind] == {**again["tables"][kind], "status": "hit", "key": info["tables"][kind]["key"]}
    assert second.reference is None
    batch = next(iter(dm.loader("train", shuffle=True)))
    torch.testing.assert_close(second.pair_logps(batch).chosen, live.pair_logps(batch).chosen)  # same policy


def test_the_marginal_contexts_have_their_own_tables(tok, tmp_path):
    """marginal_context=none and start_token score other tokens: other keys, other tables (n-1 counts
    against n), and each run's live pass agrees with its own table."""
    infos, tables = {}, {}
    for context in ("start_token", "none"):
        module = PreferenceModule(model(tok), RMiPOLoss(marginal="reference", marginal_context=context))
        infos[context] = attach_caches(CFG, module.frozen, data(tok, marginal_context=context), tmp_path)["logp_cache"]
        tables[context] = module._table_marginal_train_tokens
    assert [i["tables"]["marginal"]["status"] for i in infos.values()] == ["built", "built"]
    assert infos["none"]["tables"]["marginal"]["key"] != infos["start_token"]["tables"]["marginal"]["key"]
    assert torch.equal(tables["none"], tables["start_token"] - 1)
    lengths = torch.tensor([[len(it["chosen_ids"]), len(it["rejected_ids"])] for it in data(tok).train_dataset.items])
    assert torch.equal(tables["start_token"], lengths)


def test_dpo_and_ipo_share_the_reference_table(tok, tmp_path):
    dm = data(tok)
    a = attach_caches(CFG, PreferenceModule(model(tok), DPOLoss()).frozen, dm, tmp_path)["logp_cache"]
    b = attach_caches(CFG, PreferenceModule(model(tok), IPOLoss()).frozen, dm, tmp_path)["logp_cache"]
    assert b["tables"]["reference"]["status"] == "hit"
    assert a["tables"]["reference"]["key"] == b["tables"]["reference"]["key"]


def test_changed_data_model_or_truncation_misses(tok, tmp_path):
    base = attach_caches(CFG, PreferenceModule(model(tok), DPOLoss()).frozen, data(tok), tmp_path)["logp_cache"]
    key = base["tables"]["reference"]["key"]
    changed_rows = sort_rows(10)
    changed_rows[3] = {**changed_rows[3], "rejected": changed_rows[3]["rejected"] + "9"}
    variants = {
        "one rejected response longer": (model(tok), data(tok, train=changed_rows)),
        "another initialisation": (model(tok, seed=1), data(tok)),
        "max_length 24 -> 30 (nothing truncated either way)": (model(tok), data(tok, max_length=30)),
    }
    assert data(tok).train_dataset.items == data(tok, max_length=30).train_dataset.items  # ids alike
    for name, (policy, dm) in variants.items():
        info = attach_caches(CFG, PreferenceModule(policy, DPOLoss()).frozen, dm, tmp_path)["logp_cache"]
        assert info["tables"]["reference"]["status"] == "built", name
        assert info["tables"]["reference"]["key"] != key, name
    # the batch size of the run is not part of the key: the tables are per pair
    same = attach_caches(CFG, PreferenceModule(model(tok), DPOLoss()).frozen, data(tok, batch_size=2), tmp_path)
    assert same["logp_cache"]["tables"]["reference"]["status"] == "hit"


def test_a_lora_run_builds_base_model_tables_that_a_full_run_hits(tok, tmp_path):
    pytest.importorskip("peft")
    from prefopt.models.setup import apply_lora

    dm = data(tok)
    lora = PreferenceModule(apply_lora(model(tok), OmegaConf.create({"r": 4})), DPOLoss())
    with torch.no_grad():
        for name, p in lora.policy.named_parameters():
            if "lora_B" in name:
                p.normal_()  # adapters that change the output: the tables must not see them
    info = attach_caches(CFG, lora.frozen, dm, tmp_path)["logp_cache"]
    assert info["tables"]["reference"]["status"] == "built" and lora.policy.training
    full = PreferenceModule(model(tok), DPOLoss())
    expected, _ = live_frozen_logps(full, dm, "train", "reference")
    again = attach_caches(CFG, full.frozen, dm, tmp_path)["logp_cache"]
    assert again["tables"]["reference"]["status"] == "hit"
    torch.testing.assert_close(lora._table_reference_train_logps, expected, rtol=1e-5, atol=1e-5)


def test_weights_fingerprint_sees_a_single_changed_number(tok):
    a, b = model(tok), model(tok)
    assert weights_fingerprint(a) == weights_fingerprint(b)
    with torch.no_grad():
        b.model.layers[0].mlp.up_proj.weight[3, 5] += 1e-3
    assert weights_fingerprint(a) != weights_fingerprint(b)


def test_off_or_not_needed_keeps_the_live_path(tok, tmp_path):
    off = OmegaConf.create({"logp_cache": False})
    module = PreferenceModule(model(tok), DPOLoss())
    info = attach_caches(off, module.frozen, data(tok), tmp_path)["logp_cache"]
    assert info == {"enabled": False, "used": False, "tables": {}, "reason": "logp_cache=false"}
    assert module.reference is not None
    for loss in (SimPOLoss(), RMiPOLoss()):  # marginal=policy: the live policy scores π(y)
        info = attach_caches(OmegaConf.create({}), PreferenceModule(model(tok), loss).frozen, data(tok), tmp_path)
        assert info["logp_cache"]["enabled"] and not info["logp_cache"]["used"]
    assert not (tmp_path / "logps").exists()


def test_the_callback_reports_what_it_did_once_per_fit(tok, tmp_path):
    """LogpCaches keeps attach_caches's facts in `report` and hands them to `on_report`; it holds no
    run dict of its own, and a second setup (or another stage) changes nothing."""
    from prefopt.train.logp_caches import LogpCaches

    got = []
    callback = LogpCaches(CFG, data(tok), tmp_path, on_report=got.append)
    module = PreferenceModule(model(tok), DPOLoss())
    trainer = type("T", (), {"strategy": object(), "world_size": 1})()
    callback.setup(trainer, module, "validate")
    assert callback.report is None and module.reference is not None
    callback.setup(trainer, module, "fit")
    assert got == [callback.report] and callback.report["logp_cache"]["tables"]["reference"]["status"] == "built"
    assert module.reference is None and module.frozen.source("reference", "eval") == "table"
    callback.setup(trainer, module, "fit")
    assert len(got) == 1


@pytest.mark.slow
def test_a_sweep_computes_the_reference_once(cache_root, tmp_path):
    """`-m loss.beta=a,b` with loss=dpo: the first job builds the tables, the second finds them."""
    from test_run import SMALL_SORT, run_cli

    sweep = tmp_path / "sweep"
    proc = run_cli(["-m", "loss=dpo", "loss.beta=0.1,0.3", *SMALL_SORT, "trainer.max_steps=4", "logger=none",
                    f"hydra.sweep.dir={sweep}"], cache_root, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    infos = [json.loads(p.read_text())["info"]["logp_cache"] for p in sorted(sweep.glob("*/results.json"))]
    assert len(infos) == 2 and all(i["used"] and i["reference_released"] for i in infos)
    statuses = [i["tables"]["reference"]["status"] for i in infos]
    assert statuses[1] == "hit" and statuses[0] in ("built", "hit")  # built, unless an earlier test built it
    assert infos[0]["tables"]["reference"]["key"] == infos[1]["tables"]["reference"]["key"]


def test_table_build_checks_the_shared_pass_and_falls_back(monkeypatch, capsys):
    """With share_prompt=auto a table is built with shared prompts only after the first batch's check."""
    import prefopt.scoring.shared as logps_file
    from helpers import collated, tiny_model
    from prefopt.scoring.logp_cache import compute_table

    pairs = [([1] + [5 + (i + j) % 9 for j in range(18)], [8, 9, 2], [10 + i % 3, 2]) for i in range(6)]
    batch = collated(pairs)
    model = tiny_model()
    rows, rows_tokens = compute_table(model, [batch], 6, "reference", torch.device("cpu"), share_prompt=False)
    shared, _ = compute_table(model, [batch], 6, "reference", torch.device("cpu"), share_prompt="auto")
    torch.testing.assert_close(shared, rows, rtol=1e-5, atol=1e-5)
    real = logps_file.shared_prompt_logps
    monkeypatch.setattr(logps_file, "shared_prompt_logps", lambda *a, **k: (real(*a, **k)[0] - 3.0, real(*a, **k)[1]))
    checked, tokens = compute_table(model, [batch, batch], 6, "reference", torch.device("cpu"), share_prompt="auto")
    assert torch.equal(checked, rows) and torch.equal(tokens, rows_tokens)
    assert "share_prompt=auto: the shared-prompt pass does not reproduce" in capsys.readouterr().out
