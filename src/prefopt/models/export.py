"""Exporting the trained policy's answers to held-out prompts in the format AlpacaEval reads.

With `eval.generate=true`, the run answers the prompts of its evaluation rows (through the model's chat
template, exactly as in training) and writes `<run dir>/generations.json`: a list of
`{"instruction", "output", "generator", "dataset"}`, plus the sampling settings in results.json, so
`alpaca_eval --model_outputs <run dir>/generations.json` can judge them. The file is written whole (temp +
fsync + rename, prefopt.store.atomic) or not at all. Used by `prefopt.run.runner`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefopt.data.tokenize import encode_row
from prefopt.eval.generation import sample
from prefopt.store.atomic import write_text_atomic


def instruction_text(prompt: Any) -> str:
    """The instruction a judge sees: the last user turn of a chat prompt, or the prompt string."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    return users[-1] if users else prompt[-1]["content"]


def export_generations(
    policy: Any,
    tokenizer: Any,
    rows: list[dict],
    out_path: Path,
    generator: str,
    dataset: str,
    max_prompts: int,
    max_new_tokens: int,
    temperature: float,
    seed: int,
    batch_size: int,
) -> dict[str, Any]:
    """Write generations.json; return the settings to record in results.json."""
    rows = rows[:max_prompts]
    prompt_ids = [encode_row(row, tokenizer)[0] for row in rows]
    responses = sample(policy, tokenizer, prompt_ids, max_new_tokens=max_new_tokens, temperature=temperature,
                       seed=seed, batch_size=batch_size, desc="answering eval prompts")
    records = [
        {"instruction": instruction_text(row["prompt"]),
         "output": tokenizer.decode(ids, skip_special_tokens=True).strip(),
         "generator": generator, "dataset": dataset}
        for row, ids in zip(rows, responses)
    ]
    write_text_atomic(out_path, json.dumps(records, indent=2, ensure_ascii=False))  # whole or not at all
    return {"path": str(out_path), "n": len(records), "max_new_tokens": max_new_tokens,
            "temperature": temperature, "seed": seed, "chat_template": bool(getattr(tokenizer, "chat_template", None))}
