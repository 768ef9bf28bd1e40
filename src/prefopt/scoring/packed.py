"""The packed layout: a batch's 2B prompt+response sequences placed end to end, unpadded, in rows.

Its tensors (`packed_layout`), each (N, C): packed_input_ids; packed_position_ids, restarting at 0 at
each sequence (and at a row's padded tail), which a model's attention reads as sequence boundaries;
packed_segment, which of the 2B rows a token belongs to (-1: padding); packed_score_mask, 1 exactly at
the response tokens. Rows are filled first fit, longest first; the row length C is the longest
sequence's, grown by eighths until at most PACK_MAX_PADDING of the packed tokens are padding (one row of
every token has none). Not one row of every token always: attention over a packed row costs its length
squared (sdpa and eager attention compute the whole masked product), rows of C about T x C. Measured on
the throughput benchmark's variable lengths, tiny model, 4 pairs a batch, forward + backward in CPU time:
one row of all tokens 1.5x the padded rows' time; rows at 10% padding (6.6% over the batches) 0.92x; the
shared-prompt layout, 23% padding but each prompt once, 0.84x.
`packed_logps` scores them (only the rows' tails are padding); a model scores this layout when it keeps
packed sequences apart (`packing_problem`, probed once per model), else the batch falls back to the
layouts after it. The collator's plan (`packed_plan`): packed_plan_* (a prefopt.scoring.logps.ScorePlan:
the states predicting each scored token, within its own sequence, its target, padded row and order), so
the pass reads nothing back from the device. Exercised by `pytest tests/test_packed_logps.py tests/test_no_sync.py`.
"""

from __future__ import annotations

import inspect
import weakref
from typing import Any, Sequence

import torch
from torch import Tensor

from prefopt.contracts.layout import Ids, Layout, Width
from prefopt.scoring.logps import (DEFAULT_CHUNK_SIZE, ScorePlan, batch_plan, check_tolerance, head_logps,
                                   model_body_and_head, plan_keys, planned_logps, probe_pass,
                                   remembered_verdict, score_plan)

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


def padded_rows(lengths: Sequence[int], capacity: int | None = None,
                width: Width = None) -> tuple[list[list[int]], list[int]]:
    """`packed_rows`' (items of each row, room left in each), each row's room grown so that every row is
    `width` of the packed length long (token buckets; None: as packed)."""
    length, rows, room = packed_rows(lengths, capacity)
    extra = width(length) - length if width is not None else 0
    return rows, [left + extra for left in room]


def packed_layout(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int,
                  capacity: int | None = None, width: Width = None) -> dict[str, Tensor]:
    """The sequences prompt_i + response_i packed into rows of `capacity` tokens (default `row_length`;
    a longer sequence gets a row of its own): ids, position ids restarting at 0 per sequence, the sequence (segment) of each token
    (-1 on padding) and the response-token mask, each (N, capacity); `width`: rows padded to width(capacity)."""
    seqs = [(list(p) + list(r), len(p)) for p, r in zip(prompts, responses)]
    rows, room = padded_rows([len(s) for s, _ in seqs], capacity, width)
    out: dict[str, list[list[int]]] = {"ids": [], "positions": [], "segment": [], "score": []}
    for members, left in zip(rows, room):
        members = sorted(members)
        out["ids"].append([t for i in members for t in seqs[i][0]] + [pad_id] * left)
        out["positions"].append([j for i in members for j in range(len(seqs[i][0]))] + list(range(left)))
        out["segment"].append([i for i in members for _ in seqs[i][0]] + [-1] * left)
        out["score"].append([int(j >= seqs[i][1]) for i in members for j in range(len(seqs[i][0]))] + [0] * left)
    packed = {f"packed_{key}": torch.tensor(out[name], dtype=torch.long) for key, name in (
        ("input_ids", "ids"), ("position_ids", "positions"), ("segment", "segment"), ("score_mask", "score"))}
    return {**packed, **packed_plan(packed, len(seqs))}


def packed_plan(packed: dict[str, Tensor], n_rows: int) -> dict[str, Tensor]:
    """The `ScorePlan` of packed rows (CPU): token t of a row, scored and in the sequence of token t - 1,
    is predicted by the state at t - 1; row-major, as `packed_logps`'s mask, with the padded rows' order."""
    segment, ids = packed["packed_segment"], packed["packed_input_ids"]
    mask = packed["packed_score_mask"][:, 1:].bool() & (segment[:, 1:] == segment[:, :-1])
    at = mask.nonzero()
    return plan_keys("packed_", score_plan(at, ids[:, 1:][mask], segment[:, 1:][mask], n_rows, ids.shape[1],
                                           ordered=True))


def packed_logps(model: torch.nn.Module, input_ids: Tensor, position_ids: Tensor, segment: Tensor,
                 score_mask: Tensor, n_rows: int, chunk_size: int | None = DEFAULT_CHUNK_SIZE,
                 per_token: bool = False, plan: ScorePlan | None = None) -> tuple[Tensor, Tensor]:
    """`response_logps` of `n_rows` sequences packed end to end into rows (the collator's packed layout).

    input_ids, position_ids, segment, score_mask: (N, C); position ids restart at 0 at each sequence,
    segment[r, t] is the sequence (0..n_rows-1; -1: padding) of token t of row r, score_mask marks the
    scored tokens. The model runs with no attention mask and no cache, so transformers' mask builder
    (masking_utils.find_packed_sequence_indices) reads the position restarts as sequence boundaries and
    attends block-diagonally (causal, and sliding-window, within each sequence); `packing_problem`
    checks that a model does. A sequence's first token is never scored (nothing before it predicts
    it), as column 0 of a padded row. Returns (logps (n_rows,), n_tokens (n_rows,)), or with
    `per_token` (logps (K,), rows (K,)) in the order of the padded rows (by sequence, then position).
    `plan`: the collator's `ScorePlan` of these rows (`packed_plan`), scoring without a host sync.
    """
    body, head = model_body_and_head(model)
    hidden = body(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state
    if plan is not None:
        return planned_logps(head, hidden, plan, n_rows, chunk_size, per_token)
    # position t-1 predicts token t, within one sequence only
    mask = score_mask[:, 1:].bool() & (segment[:, 1:] == segment[:, :-1])
    rows = segment[:, 1:][mask]
    logps = head_logps(head, hidden[:, :-1][mask], input_ids[:, 1:][mask], chunk_size)  # (K,)
    return by_row(logps, rows, n_rows, per_token)


def by_row(logps: Tensor, rows: Tensor, n_rows: int, per_token: bool = False) -> tuple[Tensor, Tensor]:
    """Per-token log-probs of a packed pass, each with its padded row: (sums (n_rows,), token counts
    (n_rows,)), or with `per_token` (logps (K,), rows (K,)) in the padded rows' order. A row's tokens
    are consecutive in the packed rows, so a stable sort by row is that order."""
    if per_token:
        order = torch.sort(rows, stable=True).indices
        return logps[order], rows[order]
    sums = torch.zeros(n_rows, dtype=logps.dtype, device=logps.device).index_add(0, rows, logps)
    return sums, torch.bincount(rows, minlength=n_rows)


# Verdicts of `packing_problem` per model object: the probe runs once per model.
_PACKING_VERDICTS: "weakref.WeakKeyDictionary[torch.nn.Module, str | None]" = weakref.WeakKeyDictionary()


@torch.no_grad()
def probe_packing(model: torch.nn.Module) -> str | None:
    """None when `model` keeps packed sequences apart, else what goes wrong. The probe: one row of two
    sequences, tokens [1, 2, 3, 4, 5] and [1] at positions [0..4] and [0], in eval mode without autocast.
    The second sequence's only token must get the hidden state of the first one's first token (same
    token, position 0, nothing before it). Attention that ignores the boundary mixes four more tokens
    in; a model that ignores position ids puts it at position 5."""
    body, _ = model_body_and_head(model)
    params = inspect.signature(body.forward).parameters
    if "position_ids" not in params:
        return f"{type(body).__name__}.forward takes no position_ids"
    device = next(model.parameters()).device
    ids = torch.tensor([[1, 2, 3, 4, 5, 1]], device=device)
    positions = torch.tensor([[0, 1, 2, 3, 4, 0]], device=device)
    hidden, problem = probe_pass(
        model, lambda: body(input_ids=ids, position_ids=positions, use_cache=False).last_hidden_state[0].float())
    if problem:
        return problem
    gap = float((hidden[5] - hidden[0]).abs().max())
    if gap > check_tolerance(model) * (1 + float(hidden[0].abs().max())):
        attention = getattr(getattr(model, "config", None), "_attn_implementation", None)
        return f"a packed sequence's state depends on the one before it (max difference {gap:.3g}, attention {attention})"
    return None


def packing_problem(model: torch.nn.Module) -> str | None:
    """Why `model` cannot score the packed layout (None: it can), probed once per model (`probe_packing`).

    Verified to pack (tests/test_packed_logps.py): Llama, Mistral (a sliding window shorter than the
    sequences included: the window is placed by position within each sequence), Qwen2, Gemma 2, Phi-3 and GPT-2
    (absolute positions, read from the position ids), with sdpa and eager attention (Gemma 2: eager). Refused: a body
    without position_ids (ALiBi models such as Bloom), and any attention or mask code that lets one
    sequence see another (flash attention without its variable-length path, a remote-code model with
    its own masks).
    """
    return remembered_verdict(_PACKING_VERDICTS, model, probe_packing, "packed sequences", "scoring padded rows")


def packs_batch(batch: dict[str, Tensor], model: torch.nn.Module) -> bool:
    """Whether `pair_batch_logps` scores `batch` on its packed rows: it carries the packed layout and
    `model` packs.

    A model that cannot pack falls back to the padded rows every batch also carries, with one warning,
    rather than raising: `data.pack` is a speed option with the same numbers either way, and one
    setting serves the policy, its reference, the log-prob caches and evaluation, so a run stops only
    for a problem that changes results."""
    return "packed_input_ids" in batch and packing_problem(model) is None


class PackedLayout(Layout):
    """The 2B sequences end to end in rows (see the module docstring)."""

    name = "packed"

    def tensors(self, prompts: Ids, chosen: Ids, rejected: Ids, pad_id: int, width: Width = None) -> dict[str, Any]:
        return packed_layout([*prompts, *prompts], [*chosen, *rejected], pad_id, width=width)

    def scores(self, batch: dict[str, Any], model: Any, share_prompt: bool | str = "auto") -> bool:
        return packs_batch(batch, model)

    def logps(self, model: Any, batch: dict[str, Any], per_token: bool = False) -> tuple[Tensor, Tensor]:
        return packed_logps(model, batch["packed_input_ids"], batch["packed_position_ids"], batch["packed_segment"],
                            batch["packed_score_mask"], n_rows=batch["input_ids"].shape[0], per_token=per_token,
                            plan=batch_plan(batch, "packed_"))

    def token_counts(self, batch: dict[str, Any]) -> tuple[int, int]:
        return int(batch["packed_segment"].ge(0).sum()), batch["packed_input_ids"].numel()


PACKED = PackedLayout()
