"""Sampling responses from a causal LM: batched, left-padded, KV-cached, reproducible by seed.

A hand-written decoding loop rather than `model.generate`: on the sort task's tiny CPU policy it
was as fast at batch 64 and about 20% faster at batch 256 (4096 prompts: 1.4 s against 1.7 s), and
one `torch.Generator` seeded from `seed` makes the draws reproducible without touching the global
RNG. Used by the tasks (pair sampling) and `prefopt.eval.evaluate`;
exercised by `pytest tests/test_eval.py`.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm


def _pad_id(tokenizer) -> int:
    for tid in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if tid is not None:
            return tid
    raise ValueError("the tokenizer has neither a pad nor an EOS token")


@torch.no_grad()
def _sample_batch(
    model, prompts: list[list[int]], max_new_tokens: int, temperature: float, eos_id: int | None,
    pad_id: int, generator: torch.Generator,
) -> list[list[int]]:
    device = next(model.parameters()).device
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for i, p in enumerate(prompts):  # left padding: every prompt ends at the last column
        input_ids[i, width - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[i, width - len(p):] = 1
    input_ids, mask = input_ids.to(device), mask.to(device)
    position_ids = (mask.cumsum(dim=1) - 1).clamp(min=0)
    done = torch.zeros(len(prompts), dtype=torch.bool, device=device)
    out = []
    past = None
    for _ in range(max_new_tokens):
        result = model(
            input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
            cache=past, use_cache=True, logits_to_keep=1,
        )
        past = result.cache  # transformers 5 names the KV cache `cache` (was past_key_values)
        logits = result.logits[:, -1, :].float()
        if temperature > 0:
            probs = torch.softmax(logits / temperature, dim=-1)
            token = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        else:
            token = logits.argmax(dim=-1)
        token = torch.where(done, torch.full_like(token, pad_id), token)
        out.append(token)
        if eos_id is not None:
            done = done | (token == eos_id)
        if bool(done.all()):
            break
        input_ids = token.unsqueeze(1)
        position_ids = position_ids[:, -1:] + 1
        mask = torch.cat([mask, torch.ones_like(input_ids)], dim=1)
    tokens = torch.stack(out, dim=1).tolist()
    responses = []
    for row in tokens:
        if eos_id is not None and eos_id in row:
            row = row[: row.index(eos_id) + 1]
        responses.append(row)
    return responses


def sample(
    model,
    tokenizer,
    prompt_ids: list[list[int]],
    max_new_tokens: int,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 64,
    desc: str = "sampling",
) -> list[list[int]]:
    """Sample one response per prompt; returns the response token ids, in the prompts' order.

    A response ends with the EOS token when the model produced it within `max_new_tokens` (nothing
    after it is returned), else it is cut at `max_new_tokens`. temperature <= 0 decodes greedily.
    Prompts are batched by length (less padding); the draws depend only on `seed`, the prompts and
    `batch_size`. The model is put in eval mode and its previous mode restored.
    """
    if not prompt_ids:
        return []
    if any(len(p) == 0 for p in prompt_ids):
        raise ValueError("every prompt needs at least one token (e.g. BOS)")
    device = next(model.parameters()).device
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    order = sorted(range(len(prompt_ids)), key=lambda i: len(prompt_ids[i]))
    batches = [order[i: i + batch_size] for i in range(0, len(order), batch_size)]
    eos_id, pad_id = tokenizer.eos_token_id, _pad_id(tokenizer)
    results: list[list[int]] = [[] for _ in prompt_ids]
    was_training = model.training
    model.eval()
    try:
        for batch in tqdm(batches, desc=desc, disable=True if len(batches) < 8 else None, leave=False):
            got = _sample_batch(
                model, [prompt_ids[i] for i in batch], max_new_tokens, temperature, eos_id, pad_id,
                generator,
            )
            for i, response in zip(batch, got):
                results[i] = response
    finally:
        model.train(was_training)
    return results
