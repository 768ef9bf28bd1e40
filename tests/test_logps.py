"""response_logps against a plain full-vocabulary log_softmax + gather, and what it scores."""

import torch

from helpers import BOS, PAIRS, collated, pair_batch, tiny_model
from prefopt.scoring.logps import response_logps


def naive_logps(model, input_ids, attention_mask, score_mask):
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1]
    lp = torch.log_softmax(logits.float(), -1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return (lp * score_mask[:, 1:]).sum(1)


def test_matches_full_vocabulary_computation():
    model = tiny_model()
    b = pair_batch(PAIRS)
    ours, n = response_logps(model, b["input_ids"], b["attention_mask"], b["score_mask"])
    ref = naive_logps(model, b["input_ids"], b["attention_mask"], b["score_mask"])
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    assert n.tolist() == [3, 5, 1, 2, 3, 4]  # response lengths (chosen rows, then rejected rows)


def test_chunked_head_equals_unchunked():
    model = tiny_model()
    b = pair_batch(PAIRS)
    full, _ = response_logps(model, b["input_ids"], b["attention_mask"], b["score_mask"])
    chunked, _ = response_logps(model, b["input_ids"], b["attention_mask"], b["score_mask"], chunk_size=4)
    torch.testing.assert_close(full, chunked)


def test_marginal_pass_scores_exactly_the_response_tokens():
    """The marginal row is [BOS] + response: every response token is scored, the first included."""
    model = tiny_model()
    b = pair_batch(PAIRS)
    marg, n = response_logps(model, b["marginal_input_ids"], b["marginal_attention_mask"], b["marginal_score_mask"])
    assert n.tolist() == [3, 5, 1, 2, 3, 4]
    # by hand for the first chosen response [8, 9, EOS]: log p(8|BOS) + log p(9|BOS 8) + log p(EOS|BOS 8 9)
    seq = torch.tensor([[BOS, 8, 9, 2]])
    lp = torch.log_softmax(model(input_ids=seq).logits[0, :-1], -1)
    expected = lp[0, 8] + lp[1, 9] + lp[2, 2]
    torch.testing.assert_close(marg[0], expected, rtol=1e-5, atol=1e-5)


def test_gradient_reaches_policy():
    model = tiny_model()
    b = pair_batch(PAIRS)
    logps, _ = response_logps(model, b["input_ids"], b["attention_mask"], b["score_mask"])
    logps.sum().backward()
    assert model.get_input_embeddings().weight.grad.abs().sum() > 0


# ---- the lean per-token log-prob (TokenLogProb) against log_softmax + gather -----------------------

import math  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from prefopt.scoring.logps import head_logps, token_logps  # noqa: E402


def plain_token_logps(logits, targets):
    return torch.log_softmax(logits.float(), -1).gather(-1, targets[:, None]).squeeze(-1)


def test_token_logps_by_hand():
    """Row [0, ln 3]: softmax (1/4, 3/4); row [ln 2, ln 2, 0]: (2/5, 2/5, 1/5)."""
    logits = torch.tensor([[0.0, math.log(3.0), -1e9], [math.log(2.0), math.log(2.0), 0.0]], requires_grad=True)
    out = token_logps(logits, torch.tensor([1, 2]), chunk_size=1)
    torch.testing.assert_close(out, torch.tensor([math.log(0.75), math.log(0.2)]))
    out.sum().backward()  # d/dlogits log p_t = onehot(t) - softmax
    expected = torch.tensor([[-0.25, 0.25, 0.0], [-0.4, -0.4, 0.8]])
    torch.testing.assert_close(logits.grad, expected)


@pytest.mark.parametrize("chunk", [1, 3, 256, None])
def test_lean_equals_log_softmax_gather_values_and_gradients(chunk):
    torch.manual_seed(0)
    base = torch.randn(7, 50) * 3
    targets = torch.randint(0, 50, (7,))
    weights = torch.randn(7)  # a loss that weights tokens differently
    ours_in, plain_in = base.clone().requires_grad_(), base.clone().requires_grad_()
    ours = token_logps(ours_in, targets, chunk_size=chunk)
    plain = plain_token_logps(plain_in, targets)
    torch.testing.assert_close(ours, plain)
    (ours * weights).sum().backward()
    (plain * weights).sum().backward()
    torch.testing.assert_close(ours_in.grad, plain_in.grad)
    with torch.no_grad():
        torch.testing.assert_close(token_logps(base, targets, chunk_size=chunk), plain.detach())


def test_bf16_logits_are_never_copied_whole_to_float32():
    """What the autograd graph keeps from bf16 logits is the bf16 logits themselves, not a float32 copy;
    the result and the gradient match log_softmax + gather on the upcast logits."""
    torch.manual_seed(0)
    logits = (torch.randn(64, 512) * 4).to(torch.bfloat16).requires_grad_()
    targets = torch.randint(0, 512, (64,))
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        out = token_logps(logits, targets, chunk_size=16)
    assert out.dtype == torch.float32
    big_float = [t for t in saved if t.dtype == torch.float32 and t.numel() >= 16 * 512]
    assert not big_float, [tuple(t.shape) for t in big_float]
    out.sum().backward()
    assert logits.grad.dtype == torch.bfloat16
    ref_in = logits.detach().float().requires_grad_()
    ref = plain_token_logps(ref_in, targets)
    ref.sum().backward()
    torch.testing.assert_close(out, ref.detach())
    torch.testing.assert_close(logits.grad.float(), ref_in.grad, atol=1e-2, rtol=1e-2)  # bf16 rounding


def test_no_grad_pass_holds_one_chunk_of_logits():
    """Without gradients the head runs chunk by chunk: peak memory is a fraction of the full logits."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from memory import peak_mb

    torch.manual_seed(0)
    head = torch.nn.Linear(32, 4096, bias=False)
    states, targets = torch.randn(1024, 32), torch.randint(0, 4096, (1024,))
    full_logits_mb = 1024 * 4096 * 4 / 2**20  # 16 MiB
    with torch.no_grad():
        chunked = peak_mb(lambda: head_logps(head, states, targets, chunk_size=64))
        whole = peak_mb(lambda: plain_token_logps(head(states), targets))
        torch.testing.assert_close(head_logps(head, states, targets, 64), plain_token_logps(head(states), targets))
    assert whole >= full_logits_mb
    assert chunked < full_logits_mb / 4, (chunked, whole)


def test_shared_prompt_pass_equals_full_rows_values_and_gradients():
    """Prompts of 2, 4 and 7 tokens (right-padded) run once; the responses attend to their keys."""
    from prefopt.scoring.shared import shared_prompt_logps

    model = tiny_model(layers=2)
    b = collated(PAIRS)
    assert b["prompt_ids"].shape == (3, 7) and b["response_ids"].shape == (6, 5)
    full, n_full = response_logps(model, b["input_ids"], b["attention_mask"], b["score_mask"])
    shared, n_shared = shared_prompt_logps(
        model, b["prompt_ids"], b["prompt_attention_mask"], b["response_ids"], b["response_attention_mask"]
    )
    torch.testing.assert_close(shared, full, rtol=1e-5, atol=1e-5)
    assert n_shared.tolist() == n_full.tolist() == [3, 5, 1, 2, 3, 4]
    weights = [p for p in model.parameters()]
    g_full = torch.autograd.grad((full * torch.arange(1.0, 7.0)).sum(), weights)
    g_shared = torch.autograd.grad((shared * torch.arange(1.0, 7.0)).sum(), weights)
    for a, b_ in zip(g_full, g_shared):
        torch.testing.assert_close(b_, a, rtol=1e-4, atol=1e-5)


def test_pair_batch_logps_falls_back_to_full_rows_without_the_shared_layout():
    from prefopt.scoring.layout import pair_batch_logps

    model = tiny_model()
    b = collated(PAIRS)
    shared, _ = pair_batch_logps(model, b, share_prompt=True)
    plain = {k: v for k, v in b.items() if not k.startswith(("prompt_", "response_"))}
    full, _ = pair_batch_logps(model, plain, share_prompt=True)
    unshared, _ = pair_batch_logps(model, b, share_prompt=False)
    torch.testing.assert_close(shared, full, rtol=1e-5, atol=1e-5)
    assert torch.equal(full, unshared)
    no_prompt = collated([([], [8, 9], [10])])  # an empty prompt: no shared layout
    assert "prompt_ids" not in no_prompt


def test_auto_shares_only_long_enough_prompts():
    from prefopt.scoring.shared import SHARE_MIN_PROMPT_TOKENS, shares_batch_prompt

    short = collated(PAIRS)  # prompts padded to 7 tokens
    long = collated([([BOS] + [5] * (SHARE_MIN_PROMPT_TOKENS - 1), [8, 9], [10])])
    assert not shares_batch_prompt(short, "auto") and shares_batch_prompt(long, "auto")
    assert shares_batch_prompt(short, True) and not shares_batch_prompt(long, False)
