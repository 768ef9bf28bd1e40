"""Tests of the generation evaluation and the sampler it uses: prefopt.eval.evaluate, prefopt.eval.generation."""

import pytest
import torch

from prefopt.eval.evaluate import evaluate, kl_estimate, sequence_logps, win_rate
from prefopt.eval.generation import sample
from prefopt.models.load import build_tiny
from prefopt.tasks.sort import build_sort_tokenizer
from prefopt.tasks.sort_oracle import SortOracle

torch.set_num_threads(1)

ARCH = dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
            max_position_embeddings=64)
PROMPTS = ["31415>", "27>", "9265358>", "1>", "979>", "32384626>"]


@pytest.fixture(scope="module")
def tok():
    return build_sort_tokenizer()


def noisy_model(tok, seed):
    """A tiny model with large random weights, so that its greedy answers depend on the prompt."""
    model = build_tiny(tok, **ARCH).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator) * 0.5)
    return model


@pytest.fixture(scope="module")
def models(tok):
    return noisy_model(tok, 0), noisy_model(tok, 1)


def test_win_rate_ties_count_half():
    assert win_rate([1.0, 0.5, 0.9], [0.0, 0.5, 0.1]) == pytest.approx(2.5 / 3)
    assert win_rate([0.2, 0.3], [0.2, 0.7]) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="same, non-zero number"):
        win_rate([1.0], [])


def test_kl_estimate_by_hand():
    assert kl_estimate([-1.0, -2.0], [-1.5, -1.0]) == pytest.approx(-0.25)
    assert kl_estimate([-3.0, -4.0], [-3.0, -4.0]) == 0.0
    with pytest.raises(ValueError, match="same, non-zero number"):
        kl_estimate([], [])


def test_sample_is_seeded_and_stops_at_eos(tok, models):
    ids = tok(PROMPTS * 5)["input_ids"]
    first = sample(models[0], tok, ids, max_new_tokens=6, seed=3, batch_size=8)
    assert first == sample(models[0], tok, ids, max_new_tokens=6, seed=3, batch_size=8)
    assert first != sample(models[0], tok, ids, max_new_tokens=6, seed=4, batch_size=8)
    for response in first:
        assert 1 <= len(response) <= 6
        assert tok.eos_token_id not in response[:-1]
        assert response[-1] == tok.eos_token_id or len(response) == 6


def test_greedy_batched_left_padding_matches_one_at_a_time(tok, models):
    ids = tok(PROMPTS)["input_ids"]
    batched = sample(models[1], tok, ids, max_new_tokens=8, temperature=0.0, batch_size=6)
    alone = [sample(models[1], tok, [p], max_new_tokens=8, temperature=0.0)[0] for p in ids]
    assert batched == alone and len({tuple(r) for r in alone}) > 3  # prompt-dependent answers
    generated = models[1].generate(torch.tensor([ids[0]]), max_new_tokens=8, do_sample=False,
                                   eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    assert generated[0, len(ids[0]):].tolist()[: len(alone[0])] == alone[0]


def test_sequence_logps_match_a_manual_sum(tok, models):
    prompt, response = tok("27>")["input_ids"], [5, 6, 2]
    with torch.no_grad():
        logits = models[0](input_ids=torch.tensor([prompt + response])).logits[0]
    logp = torch.log_softmax(logits, dim=-1)
    manual = sum(logp[len(prompt) - 1 + i, t].item() for i, t in enumerate(response))
    got = sequence_logps(models[0], [prompt, tok("1>")["input_ids"]], [response, [4]], tok.pad_token_id)
    assert got[0] == pytest.approx(manual, abs=1e-5)


def test_evaluate_policy_against_itself_and_another(tok, models):
    metrics, samples = evaluate(models[0], models[0], tok, PROMPTS, SortOracle(), max_new_tokens=8, seed=2)
    assert metrics["eval/kl"] == 0.0
    assert metrics["eval/win_rate"] == 0.5
    assert metrics["eval/oracle_reward"] == metrics["eval/oracle_reward_start"]
    assert 0.0 <= metrics["eval/length"] <= 8.0
    assert set(samples[0]) == {"prompt", "response", "reference_response", "reward"} and len(samples) == 5
    assert samples[0]["reward"] == SortOracle()([samples[0]["prompt"]], [samples[0]["response"]])[0]

    other, _ = evaluate(models[0], models[1], tok, PROMPTS, SortOracle(), max_new_tokens=8, seed=2)
    ids = tok(PROMPTS)["input_ids"]
    ours = sample(models[0], tok, ids, 8, seed=2)
    pi = sequence_logps(models[0], ids, ours, tok.pad_token_id)
    ref = sequence_logps(models[1], ids, ours, tok.pad_token_id)
    assert other["eval/kl"] == pytest.approx(sum(a - b for a, b in zip(pi, ref)) / len(pi), abs=1e-5)
    assert other["eval/oracle_reward"] == metrics["eval/oracle_reward"]
    lengths = [len(r) - (r[-1] == tok.eos_token_id) for r in ours]
    assert other["eval/length"] == pytest.approx(sum(lengths) / len(lengths))


def test_a_lora_policy_is_its_own_reference_with_adapters_disabled(tok, models):
    """Evaluating a LoRA policy against itself inside `disable_adapter` gives the metrics of evaluating
    it against a separate copy of its base model."""
    import copy

    pytest.importorskip("peft")
    from omegaconf import OmegaConf

    from prefopt.models.setup import apply_lora

    base = copy.deepcopy(models[1])
    lora = apply_lora(copy.deepcopy(models[1]), OmegaConf.create({"r": 4, "dropout": 0.0}))
    with torch.no_grad():
        for name, p in lora.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.5)  # adapters that change the answers
    lora.eval()
    shared, _ = evaluate(lora, lora, tok, PROMPTS, SortOracle(), max_new_tokens=8, seed=2,
                         reference_context=lora.disable_adapter)
    apart, _ = evaluate(lora, base, tok, PROMPTS, SortOracle(), max_new_tokens=8, seed=2)
    assert shared == pytest.approx(apart, abs=1e-5)
    assert shared["eval/kl"] != pytest.approx(0.0, abs=1e-3)  # the adapters were on for the policy side


def test_start_side_from_the_cache_gives_the_same_metrics_and_is_computed_once(tok, models, tmp_path, monkeypatch):
    import prefopt.eval.evaluate as eval_file
    from prefopt.eval.cache import cached_start_side

    sampling = dict(max_new_tokens=8, temperature=1.0, seed=2, batch_size=4)
    live, live_samples = evaluate(models[0], models[1], tok, PROMPTS, SortOracle(), **sampling)
    calls = []
    real = eval_file.sample
    monkeypatch.setattr(eval_file, "sample", lambda model, *a, **k: calls.append(model) or real(model, *a, **k))
    side, status = cached_start_side(tmp_path, models[1], tok, PROMPTS, SortOracle(), {"task": "sort"}, **sampling)
    assert status == "built" and calls == [models[1]]
    again, status = cached_start_side(tmp_path, models[1], tok, PROMPTS, SortOracle(), {"task": "sort"}, **sampling)
    assert status == "hit" and again == side and calls == [models[1]]  # no second sampling
    cached, cached_samples = evaluate(models[0], models[1], tok, PROMPTS, SortOracle(), start=again, **sampling)
    assert cached == live and cached_samples == live_samples
    assert calls == [models[1], models[0]]  # with the cache only the policy samples
    for changed in ({"seed": 3}, {"max_new_tokens": 6}):
        _, status = cached_start_side(tmp_path, models[1], tok, PROMPTS, SortOracle(), {"task": "sort"},
                                      **{**sampling, **changed})
        assert status == "built", changed
    for args in ((models[0], PROMPTS, {"task": "sort"}), (models[1], PROMPTS[:3], {"task": "sort"}),
                 (models[1], PROMPTS, {"task": "sort", "n": 1})):  # another start, prompts, task
        _, status = cached_start_side(tmp_path, args[0], tok, args[1], SortOracle(), args[2], **sampling)
        assert status == "built", args[1:]
