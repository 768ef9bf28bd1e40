"""A user's own evaluation instructions for generations.json: `eval.generate_prompts_file=FILE`.

AlpacaEval's 805 instructions ship in no PyPI package (the alpaca-eval 0.6.6 wheel does not hold the eval
set), so a run reads a local copy: AlpacaEval's own `alpaca_eval.json` (a JSON list of records with
`instruction`, and `dataset`, `output`, `generator`, which are ignored but for `dataset`), or the same
records one a line (JSONL). With `eval.generate=true` the run then answers exactly those instructions, all
of them and in the file's order (eval.generate_max_prompts does not cut them), instead of the eval rows'
prompts: each instruction is one user message through the policy's chat template, as training formats
chat rows (a tokenizer with no chat template: the instruction as a plain prompt), and generations.json
holds {instruction (verbatim), output, generator, dataset (the record's, else the file's stem)}, what
`alpaca_eval --model_outputs` reads. `prompts_file_problems` checks the file before anything loads (one
line naming the setting and the record); `read_prompts_file` reads it.
Used by `prefopt.config.validate` and `prefopt.run.steps.export_generations`; exercised by
`pytest tests/test_prompts_file.py`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from prefopt.errors import ConfigError

KEY = "eval.generate_prompts_file"


def _records(path: Path) -> list[Any]:
    """The file's records: a JSON list, else JSON Lines (blank lines skipped)."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{KEY}={path} is not valid JSON: {err}") from None
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ConfigError(f"{KEY}={path} line {n} is not JSON: {err}") from None
    return records


def read_prompts_file(path: str | Path) -> list[dict[str, str]]:
    """[{instruction, dataset}] of the file, in order; a one-line ConfigError naming the record otherwise."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"{KEY}={path} {'is a folder' if file.exists() else 'does not exist'}: give a JSON list "
                          "(AlpacaEval's alpaca_eval.json) or JSONL file of records with an 'instruction'")
    rows = []
    for i, record in enumerate(_records(file)):
        instruction = record.get("instruction") if isinstance(record, dict) else None
        if not isinstance(instruction, str) or not instruction.strip():
            raise ConfigError(f"{KEY}={path} record {i}: no 'instruction' string (AlpacaEval's format: "
                              '{"instruction": ..., "dataset": ...})')
        rows.append({"instruction": instruction, "dataset": str(record.get("dataset") or file.stem)})
    if not rows:
        raise ConfigError(f"{KEY}={path} holds no records")
    return rows


def prompts_file_problems(path: Optional[str]) -> list[str]:
    """The file's problem as one line (checked before training), or none; no file set: none."""
    if not path:
        return []
    try:
        read_prompts_file(path)
    except (ConfigError, OSError, UnicodeDecodeError) as err:
        return [str(err) if isinstance(err, ConfigError) else f"{KEY}={path} cannot be read: {err}"]
    return []


def instruction_rows(records: list[dict[str, str]], tokenizer: Any) -> list[dict[str, Any]]:
    """Each instruction as a normalized row the export encodes: one user message (a plain prompt for a
    tokenizer without a chat template); the responses are placeholders, never sampled from."""
    if getattr(tokenizer, "chat_template", None):
        return [{"prompt": [{"role": "user", "content": r["instruction"]}],
                 "chosen": [{"role": "assistant", "content": "A"}],
                 "rejected": [{"role": "assistant", "content": "B"}]} for r in records]
    return [{"prompt": r["instruction"], "chosen": " A", "rejected": " B"} for r in records]
