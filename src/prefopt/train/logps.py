"""The one place that turns a causal LM's outputs into per-sequence log-probs.

`response_logps` runs the model body once, applies the LM head only at the positions that predict a
scored token (at a 32k vocabulary the head is the largest cost), and sums log-probs per row.
`token_logps` is log softmax(logits)[target] computed in float32 without a float32 copy of the whole
(K, V) logits: `TokenLogProb` upcasts `chunk_size` rows at a time and saves the logits in their own
dtype for the backward (bf16 logits stay bf16). Without gradients the LM head itself runs in chunks
of `chunk_size` positions, so a reference or marginal pass never holds more than one chunk of logits.
Measurements behind these choices: `python benchmarks/logps_micro.py`.
`shared_prompt_logps` scores a pair batch with each prompt run once: the prompt's keys and values are
reused by its chosen and its rejected response (equal to `response_logps` on the concatenated rows;
the transformer skips a third of its work at equal prompt and response lengths).
Whether a run shares prompts is decided in one place, prefopt.train.frozen.FrozenScorers; here are the
mechanics (`shares_batch_prompt`, the "auto" self-check `settle_sharing`).
`packed_logps` scores a batch's 2B prompt+response sequences packed end to end into rows (the
collator's packed layout, `data.pack`): only the rows' tails are padding; `pair_batch_logps` takes it
whenever a batch carries that layout and the model packs (`packing_problem`).
Used by the training module, its frozen scorers, the log-prob caches, the evaluation and the samplers;
exercised by `pytest tests/test_logps.py tests/test_architectures.py tests/test_packed_logps.py`.
"""

from __future__ import annotations

import inspect
import weakref

import torch
from torch import Tensor

from prefopt.log import get_logger

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
    without, it runs `chunk_size` positions at a time, so peak memory is one chunk of logits.
    """
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
    attention_mask: Tensor,
    score_mask: Tensor,
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
    per_token: bool = False,
) -> tuple[Tensor, Tensor]:
    """Summed log π(token) over the tokens marked in `score_mask`, and how many were scored.

    input_ids, attention_mask, score_mask: (N, L). `score_mask[i, t] = 1` when token t of row i is
    scored (it is predicted from the hidden state at t-1, so column 0 is never scored).
    Returns (logps (N,), n_tokens (N,)), logps in float32; with `per_token`, (logps (K,), row (K,)) of
    the K scored tokens in row-major order instead.
    """
    body, head = model_body_and_head(model)
    hidden = body(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
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


def shared_prompt_logps(
    model: torch.nn.Module,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    response_ids: Tensor,
    response_mask: Tensor,
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
    per_token: bool = False,
) -> tuple[Tensor, Tensor]:
    """`response_logps` of the rows prompt_i + response_r (r = i and i + B), running each prompt once.

    prompt_ids, prompt_mask: (B, P) right-padded, every prompt at least one token; response_ids,
    response_mask: (2B, R) right-padded, rows [chosen of pairs 0..B-1; rejected of pairs 0..B-1].
    The prompt pass's keys and values (differentiable) are repeated for both responses; the response
    pass attends to them through the attention mask [prompt mask, response mask] at positions
    prompt length + j. Returns (logps (2B,), n_tokens (2B,)), logps in float32.
    """
    from transformers import DynamicCache

    body, head = model_body_and_head(model)
    out = body(input_ids=prompt_ids, attention_mask=prompt_mask, use_cache=True)
    cache_arg = "cache" if "cache" in inspect.signature(body.forward).parameters else "past_key_values"
    layers = [(layer.keys, layer.values) for layer in getattr(out, cache_arg).layers]
    cache = DynamicCache(ddp_cache_data=[(torch.cat([k, k]), torch.cat([v, v])) for k, v in layers])
    lengths = prompt_mask.sum(dim=1)
    last = out.last_hidden_state[torch.arange(prompt_ids.shape[0], device=prompt_ids.device), lengths - 1]
    width = response_ids.shape[1]
    positions = lengths.repeat(2).unsqueeze(1) + torch.arange(width, device=response_ids.device)
    hidden = body(
        input_ids=response_ids,
        attention_mask=torch.cat([prompt_mask.repeat(2, 1), response_mask], dim=1),
        position_ids=positions,
        use_cache=True,
        **{cache_arg: cache},
    ).last_hidden_state
    # token j of a response is predicted by the state before it: the prompt's last (j = 0), else j - 1
    states = torch.cat([last.repeat(2, 1).unsqueeze(1), hidden[:, :-1]], dim=1)
    return summed_logps(head, states, response_ids, response_mask.bool(), chunk_size, per_token)


# "auto" shares a batch's prompts from this padded prompt length on: below it a second, short pass
# costs more than it saves (2-layer d=64 model on one CPU thread, `python benchmarks/shared_prompt.py`:
# 1.05-1.08x the training pass time at 6 prompt tokens, 0.78-0.96x at 16-64).
SHARE_MIN_PROMPT_TOKENS = 16


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


def shares_batch_prompt(batch: dict[str, Tensor], share_prompt: bool | str = "auto",
                        model: torch.nn.Module | None = None) -> bool:
    """Whether `pair_batch_logps` runs this batch's prompts once: `share_prompt` true, or "auto" and
    prompts padded to at least SHARE_MIN_PROMPT_TOKENS; never without the shared layout, nor when the
    padded prompt + response is longer than `model`'s sliding attention window (the response pass would
    place the window by padded positions)."""
    if "prompt_ids" not in batch or share_prompt is False:
        return False
    window = attention_window(model) if model is not None else None
    if window is not None and batch["prompt_ids"].shape[1] + batch["response_ids"].shape[1] > window:
        return False
    return share_prompt is True or batch["prompt_ids"].shape[1] >= SHARE_MIN_PROMPT_TOKENS


def check_tolerance(model: torch.nn.Module) -> float:
    """Per-token tolerance of the shared-pass check, relative to 1 + |log p|: 1e-4 for float32 weights.
    In bf16 / fp16 the two passes round differently: random Mistrals of 4 layers (d=256 and 512) in bf16
    differ by up to 1.8 eps·(1 + |log p|) per token (0.31 nats at log p = -31), so half-precision weights
    get 8 eps (bf16: 0.0625, fp16: 0.0078) times 1 + |log p|."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return 1e-4 if dtype in (torch.float32, torch.float64) else 8 * torch.finfo(dtype).eps


@torch.no_grad()
def check_shared_prompt(model: torch.nn.Module, batch: dict[str, Tensor], tolerance: float | None = None) -> str | None:
    """None when the shared-prompt pass reproduces `model`'s full-row log-probs on `batch` token by token,
    |shared - full| <= tolerance·(1 + |full|) (default `check_tolerance`), run in eval mode and without
    autocast (a mismatch then means the layout, not rounding); else what went wrong: an architecture
    whose cache or masks do not fit the shared layout."""
    tolerance = check_tolerance(model) if tolerance is None else tolerance
    batch = without_packing(batch)
    was_training = model.training
    model.eval()
    try:
        with torch.autocast(next(model.parameters()).device.type, enabled=False):
            shared, _ = pair_batch_logps(model, batch, share_prompt=True, per_token=True)
            rows, _ = pair_batch_logps(model, batch, share_prompt=False, per_token=True)
    except Exception as err:  # noqa: BLE001 - any failure means: do not share with this model
        return f"{type(err).__name__}: {err}"
    finally:
        model.train(was_training)
    if shared.shape != rows.shape:
        return f"the shared pass scored {shared.numel()} tokens, full rows {rows.numel()}"
    excess = (shared - rows).abs() - tolerance * (1 + rows.abs())
    if rows.numel() and float(excess.max()) > 0:
        worst = int(excess.argmax())
        return (f"per-token log-probs differ by up to {float((shared - rows).abs().max()):.3g} "
                f"({float(shared[worst]):.4g} against {float(rows[worst]):.4g}; tolerance {tolerance:.3g}·(1 + |log p|))")
    return None


def settle_sharing(model: torch.nn.Module, batch: dict[str, Tensor], share_prompt: bool | str) -> bool | str:
    """`share_prompt` after `batch`: "auto" turns into True or False at the first batch that would share,
    by `check_shared_prompt` on it (False, with a message, for a model the shared pass does not fit);
    any other value, or a batch that would not share, leaves it as it is."""
    if share_prompt != "auto" or not shares_batch_prompt(batch, "auto"):
        return share_prompt
    problem = check_shared_prompt(model, batch)
    if problem:
        log.info(f"share_prompt=auto: the shared-prompt pass does not reproduce "
                 f"{type(model).__name__}'s log-probs ({problem}); scoring full rows")
    return problem is None


def batch_layout(batch: dict[str, Tensor], model: torch.nn.Module, share_prompt: bool | str = "auto") -> str:
    """The layout `pair_batch_logps` scores `batch` on: "tree" (the prompt-once packed rows, when the
    batch carries them and `model` scores them: prefopt.train.tree), "packed" (when `model` packs,
    `packs_batch`), "shared" (each prompt once, `shares_batch_prompt`), else "rows"."""
    from prefopt.train.tree import trees_batch

    if trees_batch(batch, model):
        return "tree"
    if packs_batch(batch, model):
        return "packed"
    return "shared" if shares_batch_prompt(batch, share_prompt, model) else "rows"


def pair_batch_logps(model: torch.nn.Module, batch: dict[str, Tensor], share_prompt: bool | str = "auto",
                     per_token: bool = False):
    """(logps (2B,), n_tokens (2B,)) of a collated pair batch's responses given their prompts, on the
    layout `batch_layout` picks (same numbers every way). `per_token`: the scored tokens' log-probs
    unsummed, (logps (K,), rows (K,)), in the same order all ways."""
    layout = batch_layout(batch, model, share_prompt)
    if layout == "tree":
        from prefopt.train.tree import tree_logps

        return tree_logps(model, batch, n_rows=batch["input_ids"].shape[0], per_token=per_token)
    if layout == "packed":
        return packed_logps(model, batch["packed_input_ids"], batch["packed_position_ids"], batch["packed_segment"],
                            batch["packed_score_mask"], n_rows=batch["input_ids"].shape[0], per_token=per_token)
    if layout == "shared":
        return shared_prompt_logps(
            model, batch["prompt_ids"], batch["prompt_attention_mask"], batch["response_ids"],
            batch["response_attention_mask"], per_token=per_token,
        )
    return response_logps(model, batch["input_ids"], batch["attention_mask"], batch["score_mask"],
                          per_token=per_token)


# ---------------------------------------------------------------------------- the packed layout


def without_packing(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """`batch` without its packed layouts (the padded layouts only)."""
    return {k: v for k, v in batch.items() if not k.startswith(("packed_", "tree_"))}


def packed_logps(model: torch.nn.Module, input_ids: Tensor, position_ids: Tensor, segment: Tensor,
                 score_mask: Tensor, n_rows: int, chunk_size: int | None = DEFAULT_CHUNK_SIZE,
                 per_token: bool = False) -> tuple[Tensor, Tensor]:
    """`response_logps` of `n_rows` sequences packed end to end into rows (the collator's packed layout).

    input_ids, position_ids, segment, score_mask: (N, C); position ids restart at 0 at each sequence,
    segment[r, t] is the sequence (0..n_rows-1; -1: padding) of token t of row r, score_mask marks the
    scored tokens. The model runs with no attention mask and no cache, so transformers' mask builder
    (masking_utils.find_packed_sequence_indices) reads the position restarts as sequence boundaries and
    attends block-diagonally (causal, and sliding-window, within each sequence); `packing_problem`
    checks that a model does. A sequence's first token is never scored (nothing before it predicts
    it), as column 0 of a padded row. Returns (logps (n_rows,), n_tokens (n_rows,)), or with
    `per_token` (logps (K,), rows (K,)) in the order of the padded rows (by sequence, then position).
    """
    body, head = model_body_and_head(model)
    hidden = body(input_ids=input_ids, position_ids=position_ids, use_cache=False).last_hidden_state
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
    was_training = model.training
    model.eval()
    try:
        with torch.autocast(device.type, enabled=False):
            hidden = body(input_ids=ids, position_ids=positions, use_cache=False).last_hidden_state[0].float()
    except Exception as err:  # noqa: BLE001 - any failure means: do not pack for this model
        return f"{type(err).__name__}: {err}"
    finally:
        model.train(was_training)
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


def remembered_verdict(verdicts: "weakref.WeakKeyDictionary[torch.nn.Module, str | None]", model: torch.nn.Module,
                       probe, what: str, instead: str) -> str | None:
    """`probe(model)` run once per model object and kept in `verdicts`; a problem is logged once, as
    "data.pack: <model> cannot score <what> (<problem>); <instead>"."""
    if model not in verdicts:
        verdicts[model] = problem = probe(model)
        if problem:
            log.warning(f"data.pack: {type(model).__name__} cannot score {what} ({problem}); {instead}")
    return verdicts[model]


def packs_batch(batch: dict[str, Tensor], model: torch.nn.Module) -> bool:
    """Whether `pair_batch_logps` scores `batch` on its packed rows: it carries the packed layout and
    `model` packs.

    A model that cannot pack falls back to the padded rows every batch also carries, with one warning,
    rather than raising: `data.pack` is a speed option with the same numbers either way, and one
    setting serves the policy, its reference, the log-prob caches and evaluation, so a run stops only
    for a problem that changes results."""
    return "packed_input_ids" in batch and packing_problem(model) is None
