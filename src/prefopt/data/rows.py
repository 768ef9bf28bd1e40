"""Validating raw preference rows and bringing them to one shape: {"prompt", "chosen", "rejected"}.

Accepted layouts (those TRL documents for preference data):
- strings: prompt, chosen and rejected are text;
- chat: prompt, chosen and rejected are lists of {"role", "content"} messages;
- implicit prompt: no prompt column; chosen and rejected are whole conversations sharing their first
  messages, which become the prompt (the longest common prefix), the rest being the responses;
- UltraFeedback-binarized: a `prompt` string plus chosen/rejected conversations that start with the
  user turn; the shared leading messages are the prompt, as in the implicit layout.
Mixed rows are made uniform: a string prompt with message responses becomes a user message, message
prompts with string responses get assistant messages. A normalized row is all strings or all messages.

Bad rows raise `DataError` naming the source and where the row is: the reader's own words ("line 7" of
a .jsonl file, see formats.py) or, for a plain list, its 1-based "row N"; rows that are valid but
useless for training (chosen == rejected, an empty response) are dropped and counted.
Exercised by `pytest tests/data/test_row_normalize.py tests/data/test_stream_rows.py`.
"""

from __future__ import annotations

from typing import Any, Iterable, Optional, Union

from prefopt.data.errors import DataError

Messages = list[dict[str, str]]
DROP_REASONS = ("identical_responses", "empty_response")
Where = Union[int, str]  # a row's 0-based index in a list (named "row i+1"), or a label ("line 7")


def _label(i: Where) -> str:
    return i if isinstance(i, str) else f"row {i + 1}"


def _where(source: str, i: Where) -> str:
    return f"{source}, {_label(i)}"


def _messages(value: Any, field: str, source: str, i: Where) -> Messages:
    """Check a list of {"role": str, "content": str} and keep only those two keys."""
    out = []
    for j, msg in enumerate(value):
        if not isinstance(msg, dict):
            raise DataError(
                f"{_where(source, i)}: malformed message {j} in '{field}': expected an object with "
                f"'role' and 'content', got {type(msg).__name__}"
            )
        for key in ("role", "content"):
            if key not in msg:
                raise DataError(f"{_where(source, i)}: malformed message {j} in '{field}': no '{key}' key")
            if not isinstance(msg[key], str):
                got = "null" if msg[key] is None else type(msg[key]).__name__
                raise DataError(
                    f"{_where(source, i)}: malformed message {j} in '{field}': '{key}' must be a "
                    f"string, got {got}"
                )
        out.append({"role": msg["role"], "content": msg["content"]})
    return out


def _field(row: dict, field: str, source: str, i: Where) -> str | Messages:
    """A field as a string or a validated message list; a missing, null or other value is an error."""
    if field not in row:
        raise DataError(
            f"{_where(source, i)}: missing column '{field}' (columns present: {sorted(row)}); "
            "expected 'prompt', 'chosen', 'rejected'"
        )
    value = row[field]
    if value is None:
        raise DataError(f"{_where(source, i)}: field '{field}' is null")
    if isinstance(value, str):
        return value
    if isinstance(value, (list, tuple)):
        return _messages(value, field, source, i)
    raise DataError(
        f"{_where(source, i)}: field '{field}' must be a string or a list of messages, "
        f"got {type(value).__name__}"
    )


def _common_prefix(a: Messages, b: Messages) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def normalize_row(row: Any, i: Where, source: str) -> dict[str, Any]:
    """One raw row -> {"prompt", "chosen", "rejected"}, all strings or all message lists.

    `i` is the row's 0-based index (reported as "row i+1") or where it is ("line 7").
    Raises DataError (naming `source` and `i`) for missing columns, null or non-string fields,
    malformed messages, or chat responses with no prompt column and no shared leading messages.
    """
    if not isinstance(row, dict):
        kind = type(row).__name__
        raise DataError(f"{_where(source, i)}: expected an object with prompt/chosen/rejected, got {kind}")
    chosen = _field(row, "chosen", source, i)
    rejected = _field(row, "rejected", source, i)
    if isinstance(chosen, str) != isinstance(rejected, str):
        raise DataError(f"{_where(source, i)}: 'chosen' and 'rejected' must both be strings or both message lists")
    if isinstance(chosen, str):
        return _string_responses(row, chosen, rejected, i, source)
    return _chat_responses(row, chosen, rejected, i, source)


def _string_responses(row: dict[str, Any], chosen: str, rejected: str, i: Where, source: str) -> dict[str, Any]:
    """`normalize_row` of a row whose responses are strings: its prompt a string, or messages (the
    responses then become assistant turns)."""
    if "prompt" not in row:
        raise DataError(
            f"{_where(source, i)}: missing column 'prompt' (columns present: {sorted(row)}); only "
            "chat rows (message lists) can leave the prompt implicit"
        )
    prompt = _field(row, "prompt", source, i)
    if isinstance(prompt, str):
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if not prompt:
        raise DataError(f"{_where(source, i)}: 'prompt' is an empty message list")
    return {
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


def _chat_responses(row: dict[str, Any], chosen: list, rejected: list, i: Where, source: str) -> dict[str, Any]:
    """`normalize_row` of a row whose responses are message lists: the prompt given (messages or a
    string, which becomes a user turn) or inferred from the messages both responses start with."""
    prompt = _field(row, "prompt", source, i) if "prompt" in row else None
    if isinstance(prompt, list):
        if not prompt:
            raise DataError(f"{_where(source, i)}: 'prompt' is an empty message list")
        k = len(prompt)
        if chosen[:k] == prompt and rejected[:k] == prompt:  # responses repeat the prompt turns
            chosen, rejected = chosen[k:], rejected[k:]
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
    if chosen == rejected:  # identical conversations: split off the last turn; dropped later
        return {"prompt": chosen[:-1], "chosen": chosen[-1:], "rejected": rejected[-1:]}
    k = _common_prefix(chosen, rejected)
    if k > 0:
        return {"prompt": chosen[:k], "chosen": chosen[k:], "rejected": rejected[k:]}
    if prompt is None:
        raise DataError(
            f"{_where(source, i)}: no 'prompt' column and 'chosen'/'rejected' share no leading "
            "messages, so the prompt cannot be inferred"
        )
    return {"prompt": [{"role": "user", "content": prompt}], "chosen": chosen, "rejected": rejected}


def _is_empty(response: str | Messages) -> bool:
    if isinstance(response, str):
        return not response.strip()
    return all(not m["content"].strip() for m in response)


def drop_reason(row: dict[str, Any]) -> Optional[str]:
    """Why a normalized row is useless for training (one of DROP_REASONS), or None to keep it."""
    if _is_empty(row["chosen"]) or _is_empty(row["rejected"]):
        return "empty_response"
    if row["chosen"] == row["rejected"]:
        return "identical_responses"
    return None


def normalize_rows(
    raw: Iterable[Any], source: str, strict: bool = False
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Normalize every row; return the kept rows and how many were dropped for each reason.

    Errors name a row by its 1-based position ("row 1" is the first). With `strict`, a row that would
    be dropped is a DataError naming the file, the row and the reason.
    """
    return normalize_located(((f"row {i}", row) for i, row in enumerate(raw, start=1)), source, strict)


def normalize_located(
    located: Iterable[tuple[str, Any]], source: str, strict: bool = False
) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """`normalize_rows` for (where, raw row) pairs, e.g. ("line 7", {...}) from `formats.iter_rows`:
    errors name the row as `where` says. Reads one row at a time, so a stream is never held whole."""
    rows: list[dict[str, Any]] = []
    drops = {reason: 0 for reason in DROP_REASONS}
    first_format: tuple[str, str] | None = None
    for where, raw_row in located:
        row = normalize_row(raw_row, where, source)
        fmt = "chat messages" if isinstance(row["chosen"], list) else "plain strings"
        first_format = first_format or (where, fmt)
        if fmt != first_format[1]:
            raise DataError(
                f"{source}, {where}: {fmt}, but {first_format[0]} is {first_format[1]}; "
                "a data set must use one format throughout"
            )
        reason = drop_reason(row)
        if reason is None:
            rows.append(row)
        elif strict:
            raise DataError(f"{source}, {where}: {reason.replace('_', ' ')} (data.strict=true makes this an error)")
        else:
            drops[reason] += 1
    return rows, drops
