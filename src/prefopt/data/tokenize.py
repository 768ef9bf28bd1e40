"""Turning one normalized preference row into the token ids the model sees: prompt_ids, chosen_ids,
rejected_ids.

Each response is cut out of the joint tokenization of prompt + response, never encoded on its own
(a SentencePiece tokenizer prefixes a word boundary, "▁", to any text encoded alone, so a response
encoded apart starts on a token the model never sees after the prompt).

String rows: prompt + chosen and prompt + rejected are tokenized whole, with the tokenizer's special
tokens (its BOS, if it adds one), and split at the prompt. The split rule (the common-prefix rule):
the prompt ids are the longest common prefix of the prompt encoded alone and of both joint
encodings; each response is the rest of its joint encoding, and EOS is appended (once: not when the
response already ends with it). Where no merge crosses the boundary, the prompt ids are the prompt
encoded alone and the responses are exactly what follows it in the joint encoding. Where a merge
crosses it (prompt "one tw" + response "o three" encodes as "one", " two", " three"), the prompt gives
up its last token(s) to both responses, so prompt ids + response ids are still the joint encoding and
decode to exactly the text (as far as the tokenizer's own encoding does).

Chat rows go through the model's chat template (rendered as text, `tokenize=False`; the text is
tokenized here, since `apply_chat_template(tokenize=True)` changed its return type in transformers 5):
the prompt is the templated prompt messages with the generation prompt; a response is the rest of the
templated whole conversation, tokenized jointly with the prompt and split by the same common-prefix
rule. When the template closes the turn with EOS (plus whitespace), the response ends at that EOS and no
second one is added. The tokenizer's BOS is put first when it adds one to text and the template has none.

Truncation: a chat prompt longer than `max_prompt_length` tokens is shortened inside its message
contents, earliest message first, each content cut from its start (its end is kept), and rendered
again, so role headers are never cut; when even the template with emptied contents is too long, the
row is dropped (`PromptTooLong`; the data module counts it as `dropped_prompt_too_long`). A string
prompt keeps its last `max_prompt_length` tokens (its leading BOS is kept). Each response keeps its
first `max_length - len(prompt)` tokens. A response cut to nothing drops the row (`tokenize_row`
returns None). The marginal pass (collate.py) scores these same response ids after its start token.
`PreEncoded` batches the encoding of many string rows. Exercised by `pytest tests/data/test_tokenize_row.py
tests/data/test_tokenize_real.py tests/data/test_tokenize_chat_truncation.py`.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Optional

from prefopt.data.errors import DataError


class PromptTooLong(DataError):
    """A chat prompt whose template alone (every message content emptied) exceeds max_prompt_length."""


class EncodedRow(NamedTuple):
    """Untruncated ids of a row; `prompt_cut` when chat message contents were shortened to fit."""

    prompt: list[int]
    chosen: list[int]
    rejected: list[int]
    prompt_cut: bool = False


def _encode(tokenizer: Any, text: str, special: bool = False) -> list[int]:
    return list(tokenizer(text, add_special_tokens=special)["input_ids"])


class PreEncoded:
    """A tokenizer that answers `tokenizer(text, add_special_tokens=True)` for the texts of string rows
    (each prompt, and prompt + chosen, prompt + rejected) encoded beforehand in two batched calls (a
    fast tokenizer encodes a list in Rust, ~10x faster than text by text), plus, in a third, those
    texts that end with the EOS text without special tokens (see `_encode_text`); any other call and
    every attribute go to the tokenizer itself."""

    def __init__(self, tokenizer: Any, rows: list[dict]) -> None:
        self._tokenizer = tokenizer
        self._memo: dict[tuple[str, bool], list[int]] = {}
        strings = [r for r in rows if isinstance(r, dict) and isinstance(r.get("prompt"), str)]
        prompts = [r["prompt"] for r in strings]
        joints = [r["prompt"] + r[k] for r in strings for k in ("chosen", "rejected") if isinstance(r.get(k), str)]
        eos = getattr(tokenizer, "eos_token", None)
        with_eos = [t for t in prompts + joints if eos and t.endswith(eos)]
        for texts, special in ((prompts, True), (joints, True), (with_eos, False)):
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


def common_prefix_split(prompt: list[int], joints: list[list[int]]) -> tuple[list[int], list[list[int]]]:
    """The common-prefix rule: prompt ids = the longest common prefix of `prompt` (encoded alone) and
    every joint encoding; each response = the rest of its joint encoding."""
    n = 0
    while n < len(prompt) and all(n < len(j) and j[n] == prompt[n] for j in joints):
        n += 1
    return prompt[:n], [j[n:] for j in joints]


def _encode_text(tokenizer: Any, text: str) -> list[int]:
    """Text with the tokenizer's special tokens, less an EOS the tokenizer (not the text) put last."""
    ids = _encode(tokenizer, text, special=True)
    eos = tokenizer.eos_token_id
    if eos is not None and eos != tokenizer.bos_token_id and ids[-1:] == [eos]:
        if not text.endswith(tokenizer.eos_token) or _encode(tokenizer, text)[-1:] != [eos]:
            ids = ids[:-1]
    return ids


def _string_ids(row: dict, tokenizer: Any, append_eos: bool = True) -> EncodedRow:
    prompt_text = row["prompt"]
    joints = [_encode_text(tokenizer, prompt_text + row[k]) for k in ("chosen", "rejected")]
    prompt, (chosen, rejected) = common_prefix_split(_encode_text(tokenizer, prompt_text), joints)
    end = tokenizer.eos_token_id if append_eos else None
    return EncodedRow(prompt, _with_eos(chosen, end), _with_eos(rejected, end))


def _render(tokenizer: Any, messages: list, generation_prompt: bool) -> str:
    """The chat template's text (a str; a one-text list or a mapping with `text`, as some versions
    return, is unwrapped)."""
    out = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    if isinstance(out, Mapping):
        out = out.get("text", out.get("prompt"))
    if isinstance(out, (list, tuple)) and len(out) == 1:
        out = out[0]
    if not isinstance(out, str):
        raise DataError(f"apply_chat_template(tokenize=False) returned {type(out).__name__}, not the text")
    return out


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


def _chat_head(tokenizer: Any, first_ids: list[int]) -> list[int]:
    """[BOS] when the tokenizer adds one to text and the template did not start with it, else []."""
    bos = tokenizer.bos_token_id
    return [bos] if _adds_bos(tokenizer) and first_ids[:1] != [bos] else []


def _chat_prompt(tokenizer: Any, messages: list) -> tuple[str, list[int], list[int]]:
    """The templated prompt (with the generation prompt), the BOS to put first ([] or [BOS]) and the
    prompt's ids after it."""
    text = _render(tokenizer, messages, True)
    ids = _encode(tokenizer, text)
    return text, _chat_head(tokenizer, ids), ids


def _prompt_length(tokenizer: Any, messages: list) -> int:
    _, head, ids = _chat_prompt(tokenizer, messages)
    return len(head) + len(ids)


def fit_chat_prompt(tokenizer: Any, messages: list, max_prompt_length: Optional[int]) -> tuple[list, bool]:
    """The prompt messages shortened to fit `max_prompt_length` templated tokens, and whether any was.

    Contents are cut from their start, earliest message first (a message is emptied before the next
    is touched), and the conversation is rendered again after each cut, so role headers stay whole.
    Raises `PromptTooLong` when the template with every content emptied is still too long."""
    if max_prompt_length is None:
        return messages, False
    over = _prompt_length(tokenizer, messages) - max_prompt_length
    if over <= 0:
        return messages, False
    messages = [dict(m) for m in messages]
    for msg in messages:
        content = _encode(tokenizer, msg["content"])
        while over > 0 and content:
            content = content[min(over, len(content)) :]
            msg["content"] = tokenizer.decode(content).lstrip("\ufffd") if content else ""
            over = _prompt_length(tokenizer, messages) - max_prompt_length
        if over <= 0:
            return messages, True
    raise PromptTooLong(
        f"the chat prompt's {len(messages)} role header(s) alone take more than max_prompt_length="
        f"{max_prompt_length} tokens"
    )


def _chat_ids(row: dict, tokenizer: Any, max_prompt_length: Optional[int] = None) -> EncodedRow:
    if not getattr(tokenizer, "chat_template", None):
        raise DataError(
            f"the data has chat messages but the tokenizer {tokenizer.name_or_path or ''} has no chat "
            "template; use a chat model's tokenizer, or give prompt/chosen/rejected as strings"
        )
    prompt_msgs, cut = row["prompt"], False
    prompt_text, head, alone = _chat_prompt(tokenizer, prompt_msgs)
    if max_prompt_length is not None and len(head) + len(alone) > max_prompt_length:
        prompt_msgs, cut = fit_chat_prompt(tokenizer, prompt_msgs, max_prompt_length)
        prompt_text, head, alone = _chat_prompt(tokenizer, prompt_msgs)
    joints = [
        head + _encode(tokenizer, prompt_text + _response_text(tokenizer, prompt_msgs, prompt_text, row[k]))
        for k in ("chosen", "rejected")
    ]
    prompt, (chosen, rejected) = common_prefix_split(head + alone, joints)
    eos = tokenizer.eos_token_id
    return EncodedRow(prompt, _with_eos(chosen, eos), _with_eos(rejected, eos), cut)


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
    row: dict[str, Any], tokenizer: Any, append_eos: bool = True, max_prompt_length: Optional[int] = None
) -> EncodedRow:
    """Ids of a normalized row, responses untruncated. An empty prompt becomes the start token (BOS,
    else EOS), so that the first response token is predicted from something. `append_eos=False` leaves
    string responses open-ended (continuations cut at a length, not finished). With
    `max_prompt_length`, a chat prompt is fitted to it (`fit_chat_prompt`; may raise `PromptTooLong`);
    string prompts are left whole (`truncate_pair` cuts them)."""
    if isinstance(row["prompt"], str):
        enc = _string_ids(row, tokenizer, append_eos)
    else:
        enc = _chat_ids(row, tokenizer, max_prompt_length)
    if not enc.prompt:
        start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        enc = enc._replace(prompt=[start] if start is not None else [])
    return enc


def tokenize_row(
    row: dict[str, Any], tokenizer: Any, max_length: int, max_prompt_length: Optional[int]
) -> Optional[dict[str, list[int]]]:
    """A normalized row -> dict(prompt_ids, chosen_ids, rejected_ids), truncated to fit, or None when
    truncation leaves a response with no tokens or a chat prompt's role headers alone are too long."""
    try:
        enc = encode_row(row, tokenizer, max_prompt_length=max_prompt_length)
    except PromptTooLong:
        return None
    return truncate_pair(enc.prompt, enc.chosen, enc.rejected, max_length, max_prompt_length, tokenizer.bos_token_id)
