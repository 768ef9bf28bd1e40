"""response_logps against a plain full-vocabulary log_softmax + gather, and what it scores."""

import torch

from helpers import BOS, PAIRS, pair_batch, tiny_model
from prefopt.logps import response_logps


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
