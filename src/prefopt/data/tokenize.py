"""Turning one normalized preference row into token ids: prompt_ids, chosen_ids, rejected_ids.

String rows: the prompt is tokenized with the tokenizer's special tokens (its BOS, if it adds one),
each response without them, and EOS is appended (once: not when the response already ends with it).
Chat rows go through the model's chat template: the prompt is the templated prompt messages with the
generation prompt; a response is the templated whole conversation minus that prompt text. When the
template closes a turn with EOS (plus whitespace), the response ends at that EOS and no second one is
added. Text is tokenized here, never by apply_chat_template (its tokenize=True output changed in
transformers 5).

Truncation: the prompt keeps its last `max_prompt_length` tokens (its leading BOS is kept); each
response keeps its first `max_length - len(prompt)` tokens. A response cut to nothing drops the row
(`tokenize_row` returns None). `PreEncoded` batches the encoding of many string rows. Exercised by
`pytest tests/data/test_tokenize.py`.
"""

from __future__ import annotations

from typing import Any, Optional

from prefopt.data.errors import DataError


def _encode(tokenizer: Any, text: str, special: bool = False) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


class PreEncoded:
    """A tokenizer that answers `tokenizer(text, add_special_tokens=...)` for texts encoded beforehand in
    one batched call (a fast tokenizer encodes a list in Rust, ~10x faster than text by text); any other
    call and every attribute go to the tokenizer itself."""

    def __init__(self, tokenizer: Any, rows: list[dict]) -> None:
        self._tokenizer = tokenizer
        self._memo: dict[tuple[str, bool], list[int]] = {}
        strings = [r for r in rows if isinstance(r, dict) and isinstance(r.get("prompt"), str)]
        prompts = [r["prompt"] for r in strings]
        responses = [r[k] for r in strings for k in ("chosen", "rejected") if isinstance(r.get(k), str)]
        for texts, special in ((prompts, True), (responses, False)):
            unique = list(dict.fromkeys(texts))
            if unique:
                encoded = tokenizer(unique, add_special_tokens=special)["input_ids"]
                self._memo.update({(t, special): list(ids) for t, ids in zip(unique, encoded)})

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tokenizer, name)

    def __call__(self, text: Any, add_special_tokens: bool = True, **kwargs: Any) -> Any:
        ids = self._memo.get((text, add_special_tokens)) if isinstance(text, str) and not kwargs else None
        if ids is not None:
            return {"input_ids": ids}
        return self._tokenizer(text, add_special_tokens=add_special_tokens, **kwargs)


def _adds_bos(tokenizer: Any) -> bool:
    bos = tokenizer.bos_token_id
    return bos is not None and _encode(tokenizer, "a", special=True)[:1] == [bos]


def _with_eos(ids: list[int], eos: Optional[int]) -> list[int]:
    return ids if eos is None or ids[-1:] == [eos] else ids + [eos]


def _string_ids(row: dict, tokenizer: Any, append_eos: bool = True) -> tuple[list[int], list[int], list[int]]:
    eos = tokenizer.eos_token_id
    prompt = _encode(tokenizer, row["prompt"], special=True)
    if eos is not None and eos != tokenizer.bos_token_id and prompt[-1:] == [eos]:
        if _encode(tokenizer, row["prompt"])[-1:] != [eos]:  # added by the tokenizer, not in the text
            prompt = prompt[:-1]
    end = eos if append_eos else None
    chosen = _with_eos(_encode(tokenizer, row["chosen"]), end)
    rejected = _with_eos(_encode(tokenizer, row["rejected"]), end)
    return prompt, chosen, rejected


def _render(tokenizer: Any, messages: list, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def _response_text(tokenizer: Any, prompt_msgs: list, prompt_text: str, response_msgs: list) -> str:
    full = _render(tokenizer, prompt_msgs + response_msgs, False)
    if not full.startswith(prompt_text):
        raise DataError(
            f"the chat template of {tokenizer.name_or_path or 'the tokenizer'} does not render the prompt "
            "as a prefix of the whole conversation, so the response tokens cannot be separated"
        )
    text = full[len(prompt_text) :]
    eos = tokenizer.eos_token
    stripped = text.rstrip()
    if eos and stripped.endswith(eos):  # the template closed the turn with EOS: end the response there
        text = stripped
    return text


def _chat_ids(row: dict, tokenizer: Any) -> tuple[list[int], list[int], list[int]]:
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"the data has chat messages but the tokenizer {tokenizer.name_or_path or ''} has no chat "
            "template; use a chat model's tokenizer, or give prompt/chosen/rejected as strings"
        )
    prompt_msgs = row["prompt"]
    prompt_text = _render(tokenizer, prompt_msgs, True)
    prompt = _encode(tokenizer, prompt_text)
    bos = tokenizer.bos_token_id
    if _adds_bos(tokenizer) and prompt[:1] != [bos]:  # the template has no BOS of its own
        prompt = [bos] + prompt
    eos = tokenizer.eos_token_id
    responses = [
        _with_eos(_encode(tokenizer, _response_text(tokenizer, prompt_msgs, prompt_text, row[k])), eos)
        for k in ("chosen", "rejected")
    ]
    return prompt, responses[0], responses[1]


def truncate_pair(
    prompt: list[int],
    chosen: list[int],
    rejected: list[int],
    max_length: int,
    max_prompt_length: Optional[int],
    keep_first: Optional[int] = None,
) -> Optional[dict[str, list[int]]]:
    """Cut the prompt from the left to `max_prompt_length` (keeping a leading `keep_first`, the BOS,
    when it is there) and the responses from the right to `max_length - len(prompt)`.
    Returns dict(prompt_ids, chosen_ids, rejected_ids), or None when a response is left empty."""
    if max_prompt_length is not None and len(prompt) > max_prompt_length:
        keep = keep_first is not None and prompt[:1] == [keep_first] and max_prompt_length > 1
        head = prompt[:1] if keep else []
        prompt = head + prompt[len(prompt) - (max_prompt_length - len(head)) :]
    budget = max(max_length - len(prompt), 0)
    chosen, rejected = chosen[:budget], rejected[:budget]
    if not chosen or not rejected:
        return None
    return {"prompt_ids": prompt, "chosen_ids": chosen, "rejected_ids": rejected}


def encode_row(
    row: dict[str, Any], tokenizer: Any, append_eos: bool = True
) -> tuple[list[int], list[int], list[int]]:
    """Untruncated (prompt, chosen, rejected) ids of a normalized row. An empty prompt becomes the
    start token (BOS, else EOS), so that the first response token is predicted from something.
    `append_eos=False` leaves string responses open-ended (continuations cut at a length, not finished)."""
    if isinstance(row["prompt"], str):
        prompt, chosen, rejected = _string_ids(row, tokenizer, append_eos)
    else:
        prompt, chosen, rejected = _chat_ids(row, tokenizer)
    if not prompt:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        prompt = [start] if start is not None else []
    return prompt, chosen, rejected


def tokenize_row(
    row: dict[str, Any], tokenizer: Any, max_length: int, max_prompt_length: Optional[int]
) -> Optional[dict[str, list[int]]]:
    """A normalized row -> dict(prompt_ids, chosen_ids, rejected_ids), truncated to fit, or None when
    truncation leaves a response with no tokens."""
    prompt, chosen, rejected = encode_row(row, tokenizer)
    return truncate_pair(prompt, chosen, rejected, max_length, max_prompt_length, tokenizer.bos_token_id)
