"""The one place that turns a causal LM's outputs into per-sequence log-probs.

`response_logps` runs the model body once, applies the LM head only at the positions that predict a
scored token (at a 32k vocabulary the head is the largest cost), and sums log-probs per row.
`token_logps` is log softmax(logits)[target] computed in float32 without a float32 copy of the whole
(K, V) logits: `TokenLogProb` upcasts `chunk_size` rows at a time and saves the logits in their own
dtype for the backward (bf16 logits stay bf16). Without gradients the LM head itself runs in chunks
of `chunk_size` positions, so a reference or marginal pass never holds more than one chunk of logits.
Measurements behind these choices: `python benchmarks/logps_micro.py`. Also the model facts the
layouts check against (`attention_window`, `check_tolerance`, `remembered_verdict`), and how their probes
run a trial pass (`probe_pass`, in `eval_mode`).
The layouts that call these (padded rows, shared prompt, packed, tree) are prefopt.scoring.layout's.
Index plans (`ScorePlan`, `score_plan`): the collator's CPU work that keeps the step free of host
synchronisation. A layout's plan names the K scored positions as flat indices into the hidden states, with
each one's target token and padded row, and each row's count; `planned_logps` scores with `index_select`
and `index_add` only (no boolean-mask indexing, `nonzero` or `bincount` on the device: the number of
scored tokens K is a shape the host already knows), in the order the boolean masks gave, so the sums are
the same bit for bit. `HostValue` carries a python fact (a batch has padding, its largest tree
position) through the move to the device unchanged.
Exercised by `pytest tests/test_logps.py tests/test_architectures.py tests/test_no_sync.py`.
"""

from __future__ import annotations

import weakref
from contextlib import contextmanager
from typing import Any, Callable, Iterator, NamedTuple, TypeVar

import torch
from torch import Tensor

from prefopt.log import get_logger
from prefopt.scoring.chunked_head import chunked_head_logps

T = TypeVar("T")

log = get_logger()

# Rows of logits turned into float32 log-probs at a time (and positions per LM-head call without
# gradients): 256 x 32k vocabulary = 32 MiB of float32. Measured on the CPU, K=2048 positions, V=32k
# (benchmarks/logps_micro.py): training peak 516 MiB against 750 for log_softmax+gather on float32
# logits, 320 against 750 on bf16, no-gradient peak 63 against 500, at equal or lower time.
DEFAULT_CHUNK_SIZE = 256


class ScaledHead(torch.nn.Module):
    """The LM head followed by what a causal LM's own forward does to its logits after the head:
    multiply by `logit_scale` (Cohere), divide by `logits_scaling` (Granite), soft-cap with
    `final_logit_softcapping` (Gemma 2 and 3): c·tanh(logits / c)."""

    def __init__(self, head: torch.nn.Module, multiply: float = 1.0, softcap: float | None = None) -> None:
        super().__init__()
        self.head, self.multiply, self.softcap = head, multiply, softcap

    def forward(self, states: Tensor) -> Tensor:
        logits = self.head(states)
        if self.multiply != 1.0:
            logits = logits * self.multiply
        if self.softcap:
            logits = torch.tanh(logits / self.softcap) * self.softcap
        return logits


def logit_transform(config) -> tuple[float, float | None]:
    """(multiplier, soft cap) the model's forward applies to the head's logits (1.0, None: none)."""
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    multiply = float(getattr(text, "logit_scale", None) or 1.0) / float(getattr(text, "logits_scaling", None) or 1.0)
    return multiply, getattr(text, "final_logit_softcapping", None) or None


def model_body_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The transformer body (returning hidden states) and the LM head of a HF causal LM, the head
    including any scaling or soft-capping the model applies to its logits (`ScaledHead`)."""
    head = model.get_output_embeddings()
    body = model.get_decoder() if hasattr(model, "get_decoder") else None
    if body is None or head is None:
        body = getattr(model, model.base_model_prefix)
    config = getattr(model, "config", None)
    multiply, softcap = logit_transform(config) if config is not None else (1.0, None)
    if multiply != 1.0 or softcap:
        head = ScaledHead(head, multiply, softcap)
    return body, head


class HostValue:
    """A python value in a batch that stays on the host: `.to(device)` (Lightning's and the caches'
    move of a batch) returns it unchanged, so reading it never waits for the device."""

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def to(self, *args: Any, **kwargs: Any) -> "HostValue":
        return self

    def __eq__(self, other: object) -> bool:
        return isinstance(other, HostValue) and other.value == self.value

    def __repr__(self) -> str:
        return f"HostValue({self.value!r})"


def host_value(batch: dict[str, Any], key: str, default: Any = None) -> Any:
    """The python value under `key` (a `HostValue`), or `default` when the batch has none."""
    held = batch.get(key)
    return held.value if isinstance(held, HostValue) else default


class ScorePlan(NamedTuple):
    """The scored positions of a layout, computed by the collator: index (K,) flat into the (rows x
    columns) hidden states, the state that predicts each scored token; target (K,), that token; row (K,),
    its padded row; count (n_rows,), scored tokens per row; order (K,) or None, the permutation into the
    padded rows' order (by row, then position) where the flat order differs from it."""

    index: Tensor
    target: Tensor
    row: Tensor
    count: Tensor
    order: Tensor | None = None


PLAN_FIELDS = ("index", "target", "row", "count", "order")


def score_plan(states_at: Tensor, targets: Tensor, rows: Tensor, n_rows: int, width: int,
               ordered: bool = False) -> dict[str, Tensor]:
    """A `ScorePlan`'s tensors (CPU, long) from the (r, c) of the state predicting each scored token,
    given in the order the step sums them: `states_at` (K, 2), `targets` (K,), `rows` (K,); `width`: the
    hidden states' columns; `ordered`: also the stable permutation that sorts `rows`."""
    plan = {"index": states_at[:, 0] * width + states_at[:, 1], "target": targets, "row": rows,
            "count": torch.bincount(rows, minlength=n_rows)}
    if ordered:
        plan["order"] = torch.sort(rows, stable=True).indices
    return {key: value.long().contiguous() for key, value in plan.items()}


def plan_keys(prefix: str, plan: dict[str, Tensor]) -> dict[str, Tensor]:
    """`plan` under the batch keys `<prefix>plan_<field>`."""
    return {f"{prefix}plan_{key}": value for key, value in plan.items()}


def batch_plan(batch: dict[str, Any], prefix: str) -> ScorePlan | None:
    """The `ScorePlan` a collated batch carries under `<prefix>plan_*` (None: a batch built without one)."""
    if f"{prefix}plan_index" not in batch:
        return None
    return ScorePlan(*(batch.get(f"{prefix}plan_{key}") for key in PLAN_FIELDS))


def planned_logps(head: torch.nn.Module, hidden: Tensor, plan: ScorePlan, n_rows: int,
                  chunk_size: int | None = DEFAULT_CHUNK_SIZE, per_token: bool = False) -> tuple[Tensor, Tensor]:
    """`summed_logps` from a `ScorePlan`: the states at `plan.index` of `hidden` (rows, columns, H),
    flattened, with no host synchronisation. Returns (logps (n_rows,), n_tokens (n_rows,)), or with
    `per_token` (logps (K,), rows (K,)) in the padded rows' order."""
    states = hidden.reshape(-1, hidden.shape[-1]).index_select(0, plan.index)
    logps = head_logps(head, states, plan.target, chunk_size)  # (K,)
    if per_token:
        if plan.order is None:
            return logps, plan.row
        return logps.index_select(0, plan.order), plan.row.index_select(0, plan.order)
    sums = torch.zeros(n_rows, dtype=logps.dtype, device=logps.device)
    return sums.index_add(0, plan.row, logps), plan.count


def _chunk_logps(logits: Tensor, targets: Tensor) -> Tensor:
    """log_softmax in float32 (no float32 copy of bf16 logits where the kernel upcasts itself), gather."""
    return torch.log_softmax(logits, dim=-1, dtype=torch.float32).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


class TokenLogProb(torch.autograd.Function):
    """log softmax(logits)[target] in float32, `chunk` rows at a time; saves only the logits.

    Forward: log_softmax + gather per chunk of rows. Backward: d out_k / d logits_k =
    onehot(target_k) - softmax(logits_k), rebuilt per chunk from the saved logits, so no (K, V)
    float32 tensor outlives one chunk and bf16 logits are never copied whole to float32.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, chunk: int) -> Tensor:  # type: ignore[override]
        out = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        for i in range(0, logits.shape[0], chunk):
            out[i : i + chunk] = _chunk_logps(logits[i : i + chunk], targets[i : i + chunk])
        ctx.save_for_backward(logits, targets)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        logits, targets = ctx.saved_tensors
        chunk = ctx.chunk
        grad = torch.empty_like(logits)
        for i in range(0, logits.shape[0], chunk):
            g = grad_out[i : i + chunk].unsqueeze(-1).float()
            part = torch.softmax(logits[i : i + chunk], dim=-1, dtype=torch.float32).mul_(-g)
            grad[i : i + chunk] = part.scatter_add_(-1, targets[i : i + chunk].unsqueeze(-1), g)
        return grad, None, None


def token_logps(logits: Tensor, targets: Tensor, chunk_size: int | None = DEFAULT_CHUNK_SIZE) -> Tensor:
    """log softmax(logits)[target] per row, in float32. logits (K, V), targets (K,)."""
    chunk = max(1, chunk_size or logits.shape[0] or 1)
    if torch.is_grad_enabled() and logits.requires_grad:
        return TokenLogProb.apply(logits, targets, chunk)
    out = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
    for i in range(0, logits.shape[0], chunk):
        out[i : i + chunk] = _chunk_logps(logits[i : i + chunk], targets[i : i + chunk])
    return out


def head_logps(
    head: torch.nn.Module, states: Tensor, targets: Tensor, chunk_size: int | None = DEFAULT_CHUNK_SIZE
) -> Tensor:
    """Per-position log-probs of `targets` from hidden `states` (K, H) through the LM `head`.

    With gradients the head runs once over all K positions (its backward needs the full logits anyway);
    without, it runs `chunk_size` positions at a time, so peak memory is one chunk of logits. A head
    marked by `model.chunked_head` (scoring.chunked_head) never builds the (K, vocabulary) logits at all.
    """
    chunked = chunked_head_logps(head, states, targets)
    if chunked is not None:
        return chunked
    if torch.is_grad_enabled() and states.requires_grad:
        return token_logps(head(states), targets, chunk_size)
    chunk = max(1, chunk_size or states.shape[0] or 1)
    parts = [
        token_logps(head(states[i : i + chunk]), targets[i : i + chunk], None)
        for i in range(0, states.shape[0], chunk)
    ]
    return torch.cat(parts) if parts else states.new_zeros(0, dtype=torch.float32)


def response_logps(
    model: torch.nn.Module,
    input_ids: Tensor,
    attention_mask: Tensor | None,
    score_mask: Tensor,
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
    per_token: bool = False,
    plan: ScorePlan | None = None,
) -> tuple[Tensor, Tensor]:
    """Summed log π(token) over the tokens marked in `score_mask`, and how many were scored.

    input_ids, attention_mask, score_mask: (N, L). `score_mask[i, t] = 1` when token t of row i is
    scored (it is predicted from the hidden state at t-1, so column 0 is never scored).
    Returns (logps (N,), n_tokens (N,)), logps in float32; with `per_token`, (logps (K,), row (K,)) of
    the K scored tokens in row-major order instead. `plan`: the collator's `ScorePlan` of these rows
    (indices into the (N, L) hidden states), which scores them without a host synchronisation;
    `attention_mask` None: rows without padding (the collator knows), as an all-ones mask gives.
    """
    body, head = model_body_and_head(model)
    hidden = body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
    if plan is not None:
        return planned_logps(head, hidden, plan, input_ids.shape[0], chunk_size, per_token)
    # position t-1 predicts token t: states and targets line up after dropping the last / first column
    return summed_logps(head, hidden[:, :-1], input_ids[:, 1:], score_mask[:, 1:].bool(), chunk_size, per_token)


def summed_logps(head: torch.nn.Module, states: Tensor, targets: Tensor, target_mask: Tensor,
                 chunk_size: int | None = DEFAULT_CHUNK_SIZE, per_token: bool = False) -> tuple[Tensor, Tensor]:
    """Per-row sums of log p(target) over the positions in `target_mask`, and their counts.

    states (N, T, H) are the hidden states that predict targets (N, T); the LM head runs only at the
    K positions of `target_mask` (N, T, bool). Returns (logps (N,) float32, n_tokens (N,)); with
    `per_token`, the K log-probs unsummed and the row of each, (logps (K,), rows (K,)).
    """
    rows = target_mask.nonzero(as_tuple=True)[0]
    logps = head_logps(head, states[target_mask], targets[target_mask], chunk_size)  # (K,)
    if per_token:
        return logps, rows
    sums = torch.zeros(targets.shape[0], dtype=logps.dtype, device=logps.device)
    return sums.index_add(0, rows, logps), target_mask.sum(dim=1)


def attention_window(model: torch.nn.Module) -> int | None:
    """The sliding attention window of `model`'s layers (Mistral, Gemma 2/3, Phi-3, Qwen2 when enabled),
    None when every layer attends to the whole sequence."""
    config = getattr(model, "config", None)
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    window = getattr(config, "sliding_window", None)
    types = getattr(config, "layer_types", None)
    if not window or getattr(config, "use_sliding_window", True) is False:
        return None
    return None if types is not None and "sliding_attention" not in types else int(window)


def check_tolerance(model: torch.nn.Module) -> float:
    """Per-token tolerance of the shared-pass check, relative to 1 + |log p|: 1e-4 for float32 weights.
    In bf16 / fp16 the two passes round differently: random Mistrals of 4 layers (d=256 and 512) in bf16
    differ by up to 1.8 eps·(1 + |log p|) per token (0.31 nats at log p = -31), so half-precision weights
    get 8 eps (bf16: 0.0625, fp16: 0.0078) times 1 + |log p|."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return 1e-4 if dtype in (torch.float32, torch.float64) else 8 * torch.finfo(dtype).eps


@contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """`model` in eval mode (dropout off) for the duration, then back in the mode it was in."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def probe_pass(model: torch.nn.Module, compute: Callable[[], T]) -> tuple[T | None, str | None]:
    """A layout probe's trial: `compute()` in eval mode and without autocast (a mismatch then means the
    layout, not rounding or dropout), as (its result, None), or (None, "<error type>: <message>") when it
    raises: any failure means the layout is not for this model."""
    with eval_mode(model), torch.autocast(next(model.parameters()).device.type, enabled=False):
        try:
            return compute(), None
        except Exception as err:  # noqa: BLE001 - the verdict is the message
            return None, f"{type(err).__name__}: {err}"


def rows_gap_problem(model: torch.nn.Module, got: Tensor, rows: Tensor, detail: str = "") -> str | None:
    """A probe's verdict on per-token log-probs `got` against the padded rows' `rows`: None when every
    token is within `check_tolerance` (relative to 1 + the largest |log p|), else the line saying by how much."""
    gap = float((got - rows).abs().max())
    if gap > check_tolerance(model) * (1 + float(rows.abs().max())):
        return f"per-token log-probs differ from the padded rows by up to {gap:.3g}{detail}"
    return None


def remembered_verdict(verdicts: "weakref.WeakKeyDictionary[torch.nn.Module, str | None]", model: torch.nn.Module,
                       probe, what: str, instead: str) -> str | None:
    """`probe(model)` run once per model object and kept in `verdicts`; a problem is logged once, as
    "data.pack: <model> cannot score <what> (<problem>); <instead>"."""
    if model not in verdicts:
        verdicts[model] = problem = probe(model)
        if problem:
            log.warning(f"data.pack: {type(model).__name__} cannot score {what} ({problem}); {instead}")
    return verdicts[model]

