"""Batching tokenized pairs into the tensors the module scores.

For B pairs, rows 0..B-1 are prompt+chosen and rows B..2B-1 prompt+rejected:
- input_ids, attention_mask, score_mask (2B, L): right-padded; score_mask is 1 exactly at the
  response tokens;
- marginal_input_ids, marginal_attention_mask, marginal_score_mask: the responses with no prompt, for
  RMiPO's marginal pass, as the loss's `marginal_context` asks (the step passes it):
  "start_token", (2B, S+R): start_ids + response, right-padded to the longest response; start_ids is
  the model's start token (BOS, else EOS) plus the task's "no prompt" marker if it has one (S tokens);
  the score mask is 1 exactly at the response tokens, so every response token is scored, the first
  included. "none" (the reference RMiPO code's), (2B, R): the response alone, its first token the
  context and the score mask 1 at the n-1 tokens after it (a one-token response scores none);
- prompt_ids, prompt_attention_mask (B, P) and response_ids, response_attention_mask (2B, R): the
  same pairs with each prompt once (right-padded) and the responses apart (rows as above), for the
  shared-prompt pass (prefopt.train.logps.shared_prompt_logps); left out when a prompt is empty;
- index (B,): each pair's index in its dataset (keys for cached reference/marginal log-probs);
- with `pack` (config `data.pack`), also the packed layout: the 2B prompt+response sequences above
  placed end to end, unpadded, in rows (first fit, longest first; only a row's tail is padding), each
  (N, C): packed_input_ids; packed_position_ids, restarting at 0 at each sequence (and at a row's
  padded tail), which a model's attention reads as sequence boundaries
  (prefopt.train.logps.packed_logps); packed_segment, which of the 2B rows a token belongs to (-1:
  padding); packed_score_mask, 1 exactly at the response tokens. The row length C is the longest
  sequence's, grown by eighths until at most PACK_MAX_PADDING of the packed tokens are padding (one
  row of every token has none). Not one row of every token always: attention over a packed row costs
  its length squared (sdpa and eager attention compute the whole masked product), rows of C about
  T x C. Measured on the throughput benchmark's variable lengths, tiny model, 4 pairs a batch,
  forward + backward in CPU time: one row of all tokens 1.5x the padded rows' time; rows at 10%
  padding (6.6% over the batches) 0.92x; the shared-prompt layout, 23% padding but each prompt once, 0.84x.
- with `pack` and every prompt at least one token, also the prompt-once packed (tree) layout
  (`tree_layout`): each pair as prompt + chosen + rejected, pairs end to end in rows of at most
  PACK_MAX_PADDING padding, so a prompt runs once and the two responses are not padded to one length;
  the attention mask that keeps the responses apart is built by prefopt.train.tree, which a model
  scores first when it can (then the packed layout, then the padded ones).
`token_counts` says how much of what a layout runs through the transformer is padding (the padded
share that length grouping, data/sampler.py, keeps low; packing removes all but the rows' tails).
Exercised by `pytest tests/data/test_pair_collator.py tests/test_packed_logps.py tests/test_tree_logps.py`.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor


def pad_right(seqs: Sequence[Sequence[int]], pad_value: int, length: int | None = None) -> Tensor:
    """(N, length) long tensor of the sequences, right-padded with `pad_value` (length: the longest)."""
    length = max((len(s) for s in seqs), default=0) if length is None else length
    if not seqs:
        return torch.full((0, length), pad_value, dtype=torch.long)
    # one tensor from padded Python lists: ~5x faster than filling row by row (a tensor per row)
    return torch.tensor([list(s) + [pad_value] * (length - len(s)) for s in seqs], dtype=torch.long)


class PairCollator:
    """Callable collate_fn: list of {prompt_ids, chosen_ids, rejected_ids, index} -> batch dict."""

    MARGINAL_CONTEXTS = ("start_token", "none")

    def __init__(self, pad_id: int, start_ids: Sequence[int], pack: bool = False,
                 marginal_context: str = "start_token"):
        """`start_ids`: the start token (+ marker) that "start_token" marginal rows begin with;
        `self.start_ids` is what the marginal rows do begin with ([] under "none"; the marginal cache's
        key, prefopt.train.logp_cache.cache_key)."""
        if marginal_context not in self.MARGINAL_CONTEXTS:
            raise ValueError(f"marginal_context={marginal_context!r}; one of {list(self.MARGINAL_CONTEXTS)}")
        self.pad_id = int(pad_id)
        self.marginal_context = marginal_context
        self.start_ids = [int(t) for t in start_ids] if marginal_context == "start_token" else []
        self.pack = bool(pack)
        if marginal_context == "start_token" and not self.start_ids:
            raise ValueError("the marginal pass needs at least one start token")

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Tensor]:
        prompts = [it["prompt_ids"] for it in items] * 2
        responses = [it["chosen_ids"] for it in items] + [it["rejected_ids"] for it in items]
        full = [list(p) + list(r) for p, r in zip(prompts, responses)]
        start = self.start_ids
        batch = {
            "input_ids": pad_right(full, self.pad_id),
            "attention_mask": pad_right([[1] * len(s) for s in full], 0),
            "score_mask": pad_right([[0] * len(p) + [1] * len(r) for p, r in zip(prompts, responses)], 0),
            "marginal_input_ids": pad_right([start + list(r) for r in responses], self.pad_id),
            "marginal_attention_mask": pad_right([[1] * (len(start) + len(r)) for r in responses], 0),
            "marginal_score_mask": pad_right([marginal_scored(start, len(r)) for r in responses], 0),
            "index": torch.tensor([int(it["index"]) for it in items], dtype=torch.long),
        }
        once = prompts[: len(items)]
        if all(len(p) for p in once):
            batch["prompt_ids"] = pad_right(once, self.pad_id)
            batch["prompt_attention_mask"] = pad_right([[1] * len(p) for p in once], 0)
            batch["response_ids"] = pad_right(responses, self.pad_id)
            batch["response_attention_mask"] = pad_right([[1] * len(r) for r in responses], 0)
        if self.pack:
            batch.update(packed_layout(prompts, responses, self.pad_id))
            if "prompt_ids" in batch:
                batch.update(tree_layout(once, responses[: len(items)], responses[len(items):], self.pad_id))
        return batch


def marginal_scored(start: Sequence[int], n: int) -> list[int]:
    """The score mask of a marginal row start + response (n tokens): 0 at the start tokens, 1 at every
    response token; with no start token (marginal_context=none) the first response token is the context,
    0, and the n-1 after it are scored."""
    if start:
        return [0] * len(start) + [1] * n
    return [0] * min(n, 1) + [1] * max(n - 1, 0)


# Most padding a packed batch may hold: its rows grow until their tails are at most this share (at 5%
# the benchmark's batches above ran 3.4x the padded rows' attention work, at 10% 1.8x).
PACK_MAX_PADDING = 0.10


def row_length(lengths: Sequence[int], max_padding: float = PACK_MAX_PADDING) -> int:
    """The shortest row, from the longest of `lengths` up in steps of an eighth of it, whose first-fit
    packing (`first_fit`) leaves at most `max_padding` of the processed tokens as padding."""
    return packed_rows(lengths, max_padding=max_padding)[0]


def packed_rows(lengths: Sequence[int], capacity: int | None = None,
                max_padding: float = PACK_MAX_PADDING) -> tuple[int, list[list[int]], list[int]]:
    """(row length, the items of each row, the room left in each): `first_fit` at `capacity`, or by
    default at `row_length`'s choice, keeping the packing that chose it rather than packing again."""
    if capacity is not None:
        return (capacity, *first_fit(lengths, capacity))
    longest, total = max(lengths), sum(lengths)
    step = max(1, longest // 8)
    for capacity in range(longest, total, step):
        rows, room = first_fit(lengths, capacity)
        if len(rows) * capacity - total <= max_padding * len(rows) * capacity:
            return capacity, rows, room
    return (total, *first_fit(lengths, total))


def first_fit(lengths: Sequence[int], capacity: int) -> tuple[list[list[int]], list[int]]:
    """Items of `lengths` in bins of `capacity`, longest first, each into the first bin it fits:
    (the items of each bin, the room left in each). An item longer than `capacity` gets a bin of its own."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        row = next((r for r in range(len(rows)) if room[r] >= lengths[i]), None)
        if row is None:
            rows.append([])
            room.append(capacity)
            row = len(rows) - 1
        rows[row].append(i)
        room[row] -= lengths[i]
    return rows, room


def packed_layout(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int,
                  capacity: int | None = None) -> dict[str, Tensor]:
    """The sequences prompt_i + response_i packed into rows of `capacity` tokens (default `row_length`;
    a longer sequence gets a row of its own): ids, position ids restarting at 0 per sequence, the sequence (segment) of each token
    (-1 on padding) and the response-token mask, each (N, capacity)."""
    seqs = [(list(p) + list(r), len(p)) for p, r in zip(prompts, responses)]
    lengths = [len(s) for s, _ in seqs]
    _, rows, room = packed_rows(lengths, capacity)
    out: dict[str, list[list[int]]] = {"ids": [], "positions": [], "segment": [], "score": []}
    for members, left in zip(rows, room):
        members = sorted(members)
        out["ids"].append([t for i in members for t in seqs[i][0]] + [pad_id] * left)
        out["positions"].append([j for i in members for j in range(len(seqs[i][0]))] + list(range(left)))
        out["segment"].append([i for i in members for _ in seqs[i][0]] + [-1] * left)
        out["score"].append([int(j >= seqs[i][1]) for i in members for j in range(len(seqs[i][0]))] + [0] * left)
    return {f"packed_{key}": torch.tensor(out[name], dtype=torch.long) for key, name in (
        ("input_ids", "ids"), ("position_ids", "positions"), ("segment", "segment"), ("score_mask", "score"))}


def token_counts(batch: dict[str, Tensor], shared: bool, packed: bool = False, tree: bool = False) -> tuple[int, int]:
    """(real, processed) tokens the policy's pass over `batch` runs through the transformer: with
    `tree`, the prompt-once packed rows (N, C), real where a token has a pair; with `packed`, the
    packed rows (N, C), real where a token has a segment; with `shared`, each prompt once (B, P) plus
    the responses (2B, R); else the full rows (2B, L)."""
    if tree:
        return int(batch["tree_pair"].ge(0).sum()), batch["tree_input_ids"].numel()
    if packed:
        return int(batch["packed_segment"].ge(0).sum()), batch["packed_input_ids"].numel()
    if shared:
        real = int(batch["prompt_attention_mask"].sum() + batch["response_attention_mask"].sum())
        return real, batch["prompt_ids"].numel() + batch["response_ids"].numel()
    return int(batch["attention_mask"].sum()), batch["input_ids"].numel()


def _tree_unit(prompt: Sequence[int], chosen: Sequence[int], rejected: Sequence[int], pair: int, n_pairs: int):
    """One pair's tokens prompt, chosen, rejected, with per token: position (both responses continue
    the prompt's positions), pair, branch (0 prompt, 1 chosen, 2 rejected), the padded row it is scored
    in (-1: a prompt token) and the offset in the unit of the state that predicts it (-1: none)."""
    p, c, r = len(prompt), len(chosen), len(rejected)
    ids = list(prompt) + list(chosen) + list(rejected)
    positions = list(range(p + c)) + list(range(p, p + r))
    branch = [0] * p + [1] * c + [2] * r
    row = [-1] * p + [pair] * c + [n_pairs + pair] * r
    # a response's first token is predicted by the prompt's last state, every other by its own branch's previous one
    source = [-1] * p + [p - 1 + j for j in range(c)] + [p - 1 if j == 0 else p + c + j - 1 for j in range(r)]
    return ids, positions, branch, row, source


def tree_layout(prompts: Sequence[Sequence[int]], chosen: Sequence[Sequence[int]], rejected: Sequence[Sequence[int]],
                pad_id: int, capacity: int | None = None) -> dict[str, Tensor]:
    """The B pairs packed into rows with each prompt once: a pair is the unit prompt + chosen + rejected
    (every prompt at least one token), units placed end to end by `first_fit` in rows of `capacity`
    tokens (default `row_length`: at most PACK_MAX_PADDING padding). Each (N, capacity): tree_input_ids;
    tree_position_ids (the rejected response restarts at the prompt's length, as if it followed the
    prompt alone); tree_pair (-1: padding) and tree_branch (0 prompt, 1 chosen, 2 rejected, -1
    padding), from which prefopt.train.tree builds the attention mask (a response sees its prompt and
    itself, never the other response or another pair); tree_row, the padded row (0..2B-1, chosen
    then rejected) a response token is scored in (-1 elsewhere); tree_source, the column of the state
    that predicts it (-1 elsewhere). Against the packed layout each prompt runs once; against the
    shared-prompt layout the two responses are not padded to one length."""
    units = [_tree_unit(p, c, r, i, len(prompts)) for i, (p, c, r) in enumerate(zip(prompts, chosen, rejected))]
    lengths = [len(u[0]) for u in units]
    _, rows, room = packed_rows(lengths, capacity)
    keys = ("input_ids", "position_ids", "pair", "branch", "row", "source")
    out: dict[str, list[list[int]]] = {k: [] for k in keys}
    for members, left in zip(rows, room):
        cols: dict[str, list[int]] = {k: [] for k in keys}
        for i in sorted(members):
            ids, positions, branch, row, source = units[i]
            start = len(cols["input_ids"])
            cols["source"] += [s + start if s >= 0 else -1 for s in source]
            cols["input_ids"] += ids
            cols["position_ids"] += positions
            cols["pair"] += [i] * len(ids)
            cols["branch"] += branch
            cols["row"] += row
        for key, fill in (("input_ids", pad_id), ("pair", -1), ("branch", -1), ("row", -1), ("source", -1)):
            cols[key] += [fill] * left
        cols["position_ids"] += list(range(left))
        for key in keys:
            out[key].append(cols[key])
    return {f"tree_{key}": torch.tensor(out[key], dtype=torch.long) for key in keys}
