"""Which of the accepted row formats (prefopt.data.rows) a data set uses, in words, for the run's
log and results.json (`info.data_layout`): strings, chat, chat with an implicit prompt, or a string
prompt with chat responses (UltraFeedback-binarized). Not the batch layouts of the scoring
(prefopt.scoring.layout): this is the shape of the user's rows. Exercised by `pytest tests/test_run_log.py`.
"""

from __future__ import annotations

from typing import Any

STRINGS = "strings (prompt, chosen, rejected as text)"
CHAT = "chat (prompt, chosen, rejected as message lists, through the chat template)"
IMPLICIT = "chat with an implicit prompt (the messages chosen and rejected share at the start)"
MIXED_PROMPT_STRING = "string prompt + chat responses (UltraFeedback-binarized; the prompt becomes a user turn)"
MIXED_PROMPT_CHAT = "chat prompt + string responses (the responses become assistant turns)"


def row_layout(row: dict[str, Any]) -> str:
    """The layout of one raw row (before normalization)."""
    chat = isinstance(row.get("chosen"), list)
    if "prompt" not in row:
        return IMPLICIT if chat else STRINGS
    prompt_chat = isinstance(row["prompt"], list)
    if chat:
        return CHAT if prompt_chat else MIXED_PROMPT_STRING
    return MIXED_PROMPT_CHAT if prompt_chat else STRINGS


def detect_layout(info: dict[str, Any], train_rows: list[dict[str, Any]]) -> str:
    """The layout of a run's data: from the first raw row of a local file source (`info["path"]`),
    else from the first normalized row (embedded tasks, hub data sets)."""
    path = info.get("path")
    if path:
        from pathlib import Path

        if Path(path).exists():
            from prefopt.data.formats import load_rows

            rows = load_rows(path, info.get("split"), max_rows=1)
            if rows and isinstance(rows[0], dict):
                return row_layout(rows[0])
    if not train_rows:
        return "no rows"
    return CHAT if isinstance(train_rows[0].get("chosen"), list) else STRINGS
