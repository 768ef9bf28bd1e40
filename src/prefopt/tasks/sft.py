"""Supervised fine-tuning of a causal LM on token sequences: a plain AdamW loop for the embedded tasks.

The tasks train their own small starting policy (the sort task's SFT model, later the IMDb one) on
CPU in well under a minute; Lightning would add nothing here. Linear warmup then cosine decay,
gradient clipping, next-token loss on every non-pad token. Exercised by
`pytest tests/tasks/test_sort_task.py` and by `SortTask.build`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm


def lr_factor(step: int, steps: int, warmup: int) -> float:
    """Multiplier of the peak learning rate: linear warmup over `warmup` steps, then cosine to 0."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def padded_sequences(sequences: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(the sequences right-padded with `pad_id` (N, longest), their lengths (N,))."""
    lengths = torch.tensor([len(s) for s in sequences])
    data = torch.full((len(sequences), int(lengths.max())), pad_id, dtype=torch.long)
    for i, s in enumerate(sequences):
        data[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return data, lengths


def causal_lm_loss(model: torch.nn.Module, data: torch.Tensor, lengths: torch.Tensor, idx: torch.Tensor,
                   device: torch.device) -> torch.Tensor:
    """Mean next-token cross-entropy of rows `idx` of `data` (`lengths` theirs), padding left out."""
    width = int(lengths.max())
    batch = data[idx, :width].to(device)
    logits = model(input_ids=batch).logits[:, :-1]
    padding = torch.arange(1, width, device=device)[None, :] >= lengths.to(device)[:, None]
    targets = batch[:, 1:].masked_fill(padding, -100)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


def train_causal_lm(
    model: torch.nn.Module,
    sequences: list[list[int]],
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
    pad_id: int,
    desc: str = "SFT",
    warmup_ratio: float = 0.05,
    weight_decay: float = 0.0,
    max_grad_norm: float = 1.0,
) -> list[float]:
    """Train `model` in place for `steps` AdamW steps; returns the loss of every step.

    sequences: full token sequences (e.g. BOS prompt response EOS), each trained on every token after
    the first. Batches are drawn without replacement from a seeded permutation (reshuffled each
    epoch) and right-padded with `pad_id`; positions past a sequence's end carry no loss (by length,
    so a pad id equal to the EOS id still trains the EOS). No attention mask is needed:
    with right padding a causal model's real tokens never attend to the padding after them.
    """
    if not sequences:
        raise ValueError("no sequences to train on")
    if any(len(s) < 2 for s in sequences):
        raise ValueError("every sequence needs at least two tokens")
    device = next(model.parameters()).device
    data, lengths = padded_sequences(sequences, pad_id)
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    warmup = max(1, int(warmup_ratio * steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, steps, warmup))
    model.train()
    order, cursor, losses = torch.randperm(len(sequences), generator=generator), 0, []
    bar = tqdm(range(steps), desc=desc, leave=False, disable=None)
    for _ in bar:
        if cursor + batch_size > len(order):
            order, cursor = torch.randperm(len(sequences), generator=generator), 0
        idx = order[cursor: cursor + batch_size]
        cursor += batch_size
        loss = causal_lm_loss(model, data, lengths[idx], idx, device)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if len(losses) % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / 50:.3f}")
    model.eval()
    return losses
