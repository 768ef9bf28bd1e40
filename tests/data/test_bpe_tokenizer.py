"""The tiny model's tokenizer (prefopt.data.tokenizer_builder): special tokens, chat template, round trip."""

from transformers import AutoTokenizer

from prefopt.data.tokenizer_builder import build_bpe_tokenizer

TEXTS = ["the quick brown fox jumps over the lazy dog"] * 10 + ["hello there, general"] * 5
CHAT = [{"role": "user", "content": "hello"}, {"role": "assistant", "content": "the fox"}]


def test_special_tokens_and_bos():
    tok = build_bpe_tokenizer(TEXTS, vocab_size=350)
    assert (tok.pad_token, tok.bos_token, tok.eos_token) == ("<pad>", "<s>", "</s>")
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert len(tok) <= 350
    ids = tok("the fox")["input_ids"]
    assert ids[0] == 1 and 1 not in tok("the fox", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == "the fox"
    assert tok.decode(tok("naïve ☃", add_special_tokens=False)["input_ids"]) == "naïve ☃"  # unseen bytes


def test_chat_template():
    tok = build_bpe_tokenizer(TEXTS, vocab_size=350)
    text = tok.apply_chat_template(CHAT, tokenize=False)
    assert text == "<s><|user|>\nhello</s>\n<|assistant|>\nthe fox</s>\n"
    gen = tok.apply_chat_template(CHAT[:1], tokenize=False, add_generation_prompt=True)
    assert gen == "<s><|user|>\nhello</s>\n<|assistant|>\n"
    ids = tok(gen, add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids)[:2] == ["<s>", "<|user|>"]  # markers are single tokens


def test_save_and_reload_round_trip(tmp_path):
    tok = build_bpe_tokenizer(TEXTS, vocab_size=350)
    tok.save_pretrained(tmp_path)
    back = AutoTokenizer.from_pretrained(tmp_path)
    for text in ["the lazy dog", "hello there", ""]:
        assert back(text)["input_ids"] == tok(text)["input_ids"]
    assert (back.bos_token_id, back.eos_token_id, back.pad_token_id) == (1, 2, 0)
    assert back.apply_chat_template(CHAT, tokenize=False) == tok.apply_chat_template(CHAT, tokenize=False)
    assert back.apply_chat_template(CHAT[:1], tokenize=False, add_generation_prompt=True).endswith("<|assistant|>\n")
