"""The tiny model's tokenizer (prefopt.data.tokenizer_builder): special tokens, chat template, round trip;
fed in batches from any iterable, with the same result as before; Ctrl-C stops it at once."""

import hashlib
import json
import random
import subprocess
import sys
import textwrap

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import AutoTokenizer

from prefopt.data import tokenizer_builder
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


def sha(tok) -> str:
    return hashlib.sha256(tok.backend_tokenizer.to_str().encode()).hexdigest()


def random_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(1, 8))) for _ in range(300)]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(1, 30))) for _ in range(n)] + ["naïve ☃ 漢字"]


def test_same_tokenizer_as_before_batching():
    """The whole serialized tokenizer, hashed by the code before texts were fed in batches (a cached
    tokenizer stays valid); the first merges are the most frequent pairs, counted by hand."""
    tok = build_bpe_tokenizer(iter(TEXTS), vocab_size=350)
    merges = json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]
    # h+e: the(10) Ġthe(10) hello(5) Ġthere(5) = 30; t+he: 10+10+5 = 25; e+r: Ġthere(5) Ġover(10) Ġgeneral(5) = 20
    assert merges[:3] == [["h", "e"], ["t", "he"], ["e", "r"]]
    assert len(tok) == 305
    assert sha(tok) == "7017db1e2a91d52090bf2796279333a6d765625a8f5afe444ee815230e338b91"
    assert sha(build_bpe_tokenizer(random_texts(500), vocab_size=600)) == (
        "46d4f7d41617fe6ddc3de06840cbb2ce36a0c7fc498cdfdaa5018844fd6f04b7")


def test_batches_give_the_vocabulary_of_one_list(monkeypatch):
    """Texts in several batches (2501 texts: 7 of 400, the last of 101) learn what one list of them learns."""
    monkeypatch.setattr(tokenizer_builder, "TEXTS_PER_BATCH", 400)
    texts = random_texts(2500, seed=1)
    reference = Tokenizer(models.BPE())  # the builder before batching: the whole list at once
    reference.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    reference.train_from_iterator(texts, trainer=trainers.BpeTrainer(
        vocab_size=800, special_tokens=list(tokenizer_builder.SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    built = build_bpe_tokenizer((t for t in texts), vocab_size=800)  # a generator: read once
    assert json.loads(built.backend_tokenizer.to_str())["model"] == json.loads(reference.to_str())["model"]
    assert len(built) == 800


def test_an_error_in_the_texts_reaches_the_caller():
    def texts():
        yield "hello"
        raise ValueError("text 2 is broken")

    with pytest.raises(ValueError, match="text 2 is broken"):
        build_bpe_tokenizer(texts(), vocab_size=300)


@pytest.mark.slow
def test_ctrl_c_stops_training_at_once():
    """SIGINT 0.5 s into a build of several seconds: KeyboardInterrupt within 0.5 s (measured: 0.002 s;
    the trainer called directly, as before, ran on for 2.8 s, to the end of training)."""
    code = textwrap.dedent("""
        import os, signal, threading, time
        from prefopt.data.tokenizer_builder import build_bpe_tokenizer
        hexa = str.maketrans("0123456789", "ghijklmnop")  # many distinct words: slow merges
        words = [format(i * 2654435761 % 2**40, "x").translate(hexa) for i in range(600_000)]
        texts = [" ".join(words[j:j + 500]) for j in range(0, len(words), 500)]
        sent = []
        threading.Timer(0.5, lambda: (sent.append(time.time()), os.kill(os.getpid(), signal.SIGINT))).start()
        try:
            build_bpe_tokenizer(texts, vocab_size=4096)
            print("finished")
        except KeyboardInterrupt:
            print(time.time() - sent[0])
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() != "finished", "training ended before the signal: make the corpus larger"
    assert float(out.stdout) < 0.5
