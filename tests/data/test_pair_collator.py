"""Collation (prefopt.data.collate): the contract's batch layout on a hand-made batch."""

import torch

from prefopt.data.collate import PairCollator
from prefopt.scoring.marginal import MarginalRows
from prefopt.scoring.rows import pad_right
from prefopt.scoring.layout import token_counts

torch.set_num_threads(1)

PAD, START = 0, 1
ITEMS = [
    {"prompt_ids": [5, 6], "chosen_ids": [7, 8, 2], "rejected_ids": [9, 2], "index": 3},
    {"prompt_ids": [5], "chosen_ids": [7, 2], "rejected_ids": [9, 9, 9, 2], "index": 0},
]


def test_pad_right():
    assert pad_right([[1, 2], [3]], -1).tolist() == [[1, 2], [3, -1]]
    assert pad_right([[1]], 0, length=3).tolist() == [[1, 0, 0]]


def test_layout_chosen_rows_first_then_rejected():
    b = PairCollator(pad_id=PAD, marginal=MarginalRows([START]))(ITEMS)
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 2], [5, 7, 2, 0, 0], [5, 6, 9, 2, 0], [5, 9, 9, 9, 2]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]]
    # exactly the response tokens
    assert b["score_mask"].tolist() == [[0, 0, 1, 1, 1], [0, 1, 1, 0, 0], [0, 0, 1, 1, 0], [0, 1, 1, 1, 1]]
    # [start] + response, padded to the longest response (4) + 1
    assert b["marginal_input_ids"].tolist() == [[1, 7, 8, 2, 0], [1, 7, 2, 0, 0], [1, 9, 2, 0, 0], [1, 9, 9, 9, 2]]
    assert b["marginal_attention_mask"].tolist() == [[1, 1, 1, 1, 0], [1, 1, 1, 0, 0], [1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    # exactly the response tokens after the start token
    assert b["marginal_score_mask"].tolist() == [[0, 1, 1, 1, 0], [0, 1, 1, 0, 0], [0, 1, 1, 0, 0], [0, 1, 1, 1, 1]]
    assert b["index"].tolist() == [3, 0]
    assert all(t.dtype == torch.long for t in b.values() if isinstance(t, torch.Tensor))  # the rest: HostValue facts


def test_masks_select_the_response_tokens_when_scored():
    """response_logps counts exactly the response tokens through both masks."""
    from prefopt.data.tokenizer_builder import build_bpe_tokenizer
    from prefopt.scoring.logps import response_logps
    from prefopt.models.load import build_tiny

    model = build_tiny(build_bpe_tokenizer(["a b c"], vocab_size=300), hidden_size=16, intermediate_size=32)
    b = PairCollator(pad_id=PAD, marginal=MarginalRows([START]))(ITEMS)
    with torch.no_grad():
        _, n = response_logps(model, b["input_ids"], b["attention_mask"], b["score_mask"])
        _, m = response_logps(model, b["marginal_input_ids"], b["marginal_attention_mask"], b["marginal_score_mask"])
    assert n.tolist() == [3, 2, 2, 4] and m.tolist() == [3, 2, 2, 4]


def test_marginal_start_marker_is_not_scored():
    """A task's "no prompt" marker (sort: '>') goes after the start token and is never scored."""
    b = PairCollator(pad_id=PAD, marginal=MarginalRows([START, 14]))(ITEMS[:1])
    assert b["marginal_input_ids"].tolist() == [[1, 14, 7, 8, 2], [1, 14, 9, 2, 0]]
    assert b["marginal_score_mask"].tolist() == [[0, 0, 1, 1, 1], [0, 0, 1, 1, 0]]


def test_token_counts_real_and_processed_per_layout():
    b = PairCollator(pad_id=PAD, marginal=MarginalRows([START]))(ITEMS)
    # full rows: 4 rows x 5 columns = 20 processed; real 5 + 3 + 4 + 5 = 17
    assert token_counts(b, shared=False) == (17, 20)
    # shared: prompts (2 x 2) + responses (4 x 4) = 20 processed; real prompts 2 + 1, responses 3 + 2 + 2 + 4
    assert token_counts(b, shared=True) == (14, 20)


def test_marginal_rows_without_a_start_token_score_all_but_the_first_response_token():
    """marginal_context=none (the reference RMiPO code's): the response alone, no start token nor marker,
    its first token the context (mask 0) and the n-1 after it scored; rows padded to the longest response.
    Chosen [7, 8, 2] -> mask [0, 1, 1] (2 scored); rejected [9, 2] -> [0, 1]; [7, 2] -> [0, 1];
    [9, 9, 9, 2] -> [0, 1, 1, 1] (3 scored)."""
    b = PairCollator(pad_id=PAD, marginal=MarginalRows([START, 14], "none"))(ITEMS)
    assert b["marginal_input_ids"].tolist() == [[7, 8, 2, 0], [7, 2, 0, 0], [9, 2, 0, 0], [9, 9, 9, 2]]
    assert b["marginal_attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]]
    assert b["marginal_score_mask"].tolist() == [[0, 1, 1, 0], [0, 1, 0, 0], [0, 1, 0, 0], [0, 1, 1, 1]]
    assert b["input_ids"].tolist() == PairCollator(pad_id=PAD, marginal=MarginalRows([START]))(ITEMS)["input_ids"].tolist()
    assert PairCollator(pad_id=PAD, marginal=MarginalRows([START, 14], "none")).marginal.start_ids == []


def test_marginal_counts_per_context_when_scored():
    """response_logps counts n tokens after a start token (start_token) and n-1 with none; a one-token
    response scores 0 with none."""
    from prefopt.data.tokenizer_builder import build_bpe_tokenizer
    from prefopt.models.load import build_tiny
    from prefopt.scoring.logps import response_logps

    model = build_tiny(build_bpe_tokenizer(["a b c"], vocab_size=300), hidden_size=16, intermediate_size=32)
    items = ITEMS + [{"prompt_ids": [5], "chosen_ids": [2], "rejected_ids": [9, 2], "index": 1}]
    counts = {}
    for context in ("start_token", "none"):
        b = PairCollator(pad_id=PAD, marginal=MarginalRows([START], context))(items)
        with torch.no_grad():
            counts[context] = response_logps(model, b["marginal_input_ids"], b["marginal_attention_mask"],
                                             b["marginal_score_mask"])[1].tolist()
    assert counts["start_token"] == [3, 2, 1, 2, 4, 2]
    assert counts["none"] == [2, 1, 0, 1, 3, 1]


def test_marginal_context_must_be_known():
    import pytest

    with pytest.raises(ValueError, match="marginal_context='bos'"):
        PairCollator(pad_id=PAD, marginal=MarginalRows([START], "bos"))


def test_a_batch_carries_only_what_its_layouts_and_loss_need():
    """No marginal rows without a marginal pass (DPO), no shared-prompt rows with share_prompt=false, the
    packed and tree rows only with data.pack: the padded rows and the pair index always."""
    from prefopt.scoring.layout import LayoutChoice

    plain = PairCollator(pad_id=PAD, layout=LayoutChoice(share_prompt=False))(ITEMS)
    plan = {f"plan_{k}" for k in ("index", "target", "row", "count")}  # the collator's index plans
    assert set(plain) == {"input_ids", "attention_mask", "score_mask", "index", *plan}
    shared = PairCollator(pad_id=PAD)(ITEMS)
    assert set(shared) - set(plain) == {"prompt_ids", "prompt_attention_mask", "response_ids", "response_attention_mask",
                                        "prompt_lengths", "shared_padded", *(f"response_{k}" for k in plan)}
    packed = PairCollator(pad_id=PAD, layout=LayoutChoice(pack=True, share_prompt=False),
                          marginal=MarginalRows([START], "none"))(ITEMS)
    assert {k for k in packed if k.startswith("marginal_")} == {"marginal_input_ids", "marginal_attention_mask",
                                                                 "marginal_score_mask", *(f"marginal_{k}" for k in plan)}
    assert any(k.startswith("packed_") for k in packed) and any(k.startswith("tree_") for k in packed)
    assert "prompt_ids" not in packed
