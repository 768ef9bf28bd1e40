"""Exporting the trained policy's answers to held-out prompts in the format AlpacaEval reads.

With `eval.generate=true`, the run answers the prompts of its evaluation rows (through the model's chat
template, exactly as in training), or with `eval.generate_prompts_file=FILE` every instruction of a local
AlpacaEval-format file (prefopt.eval.prompts_file), and writes `<run dir>/generations.json`: a list of
`{"instruction", "output", "generator", "dataset"}`, plus the sampling settings and the generator in
results.json (`info.generations`), so `alpaca_eval --model_outputs <run dir>/generations.json` can judge
them. `generator_name` is the run's name on a leaderboard, unique within a study (and across studies):
`python src/analyze.py STUDY --scores leaderboard.csv` matches the leaderboard's rows to runs by it. The
file is written whole (temp + fsync + rename, prefopt.store.atomic) or not at all. Used by
`prefopt.run.steps`; exercised by `pytest tests/test_scores.py` (the name), tests/test_smollm2.py and
tests/test_prompts_file.py.
"""

from __future__ import annotations

import hashlib
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


def generator_name(run_dir: Path, method: str, beta: Any = None, lr: Any = None, seed: Any = None,
                   model: str | None = None) -> str:
    """The run's name on a leaderboard: `[<model>-]<method>-beta<β>-lr<lr>-seed<s>-<8 hex digits>` (a part
    whose value is None left out), e.g. `mistral7b-dpo-beta0.1-lr5e-07-seed0-1a2b3c4d`; the digits hash the
    run folder's absolute path, so no two runs share a name, within a study or across studies (AlpacaEval
    skips a generator its leaderboard already holds: a reused name would never be judged). A rerun into
    the same folder keeps its name."""
    named = (("beta", beta), ("lr", lr), ("seed", seed))
    parts = [*([str(model)] if model else []), str(method)]
    parts += [f"{key}{_short(value)}" for key, value in named if value is not None]
    digest = hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:8]
    return "-".join([*parts, digest])


def _short(value: Any) -> str:
    """A number as `:g` writes it (0.1, 5e-07, 0); anything else as its string."""
    try:
        return f"{float(value):g}"
    except (TypeError, ValueError):
        return str(value)


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
    instructions: list[dict[str, str]] | None = None,
) -> dict[str, Any]:
    """Write generations.json; return what to record in results.json (`info.generations`): its path, the
    number of answers, the sampling settings and the `generator` every record carries. `instructions`
    ({instruction, dataset} of eval.generate_prompts_file, prefopt.eval.prompts_file): answer all of them
    instead of the first `max_prompts` rows, each record keeping its instruction and dataset."""
    from prefopt.eval.prompts_file import instruction_rows

    if instructions is not None:
        rows = instruction_rows(instructions, tokenizer)
        named = [(r["instruction"], r["dataset"]) for r in instructions]
    else:
        rows = rows[:max_prompts]
        named = [(instruction_text(row["prompt"]), dataset) for row in rows]
    prompt_ids = [encode_row(row, tokenizer)[0] for row in rows]
    responses = sample(policy, tokenizer, prompt_ids, max_new_tokens=max_new_tokens, temperature=temperature,
                       seed=seed, batch_size=batch_size, desc="answering eval prompts")
    records = [
        {"instruction": instruction, "output": tokenizer.decode(ids, skip_special_tokens=True).strip(),
         "generator": generator, "dataset": source}
        for (instruction, source), ids in zip(named, responses)
    ]
    write_text_atomic(out_path, json.dumps(records, indent=2, ensure_ascii=False))  # whole or not at all
    return {"path": str(out_path), "n": len(records), "generator": generator, "max_new_tokens": max_new_tokens,
            "temperature": temperature, "seed": seed, "chat_template": bool(getattr(tokenizer, "chat_template", None))}
