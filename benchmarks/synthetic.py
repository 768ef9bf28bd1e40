"""Synthetic models, tokenizer and preference rows for benchmarks and parity tests (no downloads).

A word-level tokenizer over "w4".."w{V-1}" (plus <pad> <s> </s> <unk>) makes text whose token ids are
known exactly: a prompt of n words tokenizes to BOS + n ids, a response of n words to n ids (+ EOS),
for prefopt's tokenization and TRL's alike. `MODELS` are the two benchmark sizes, built with
prefopt.models.load.build_tiny: `tiny` (the `model=tiny` architecture, 4k vocabulary) and `small` (about
20M parameters, 32k vocabulary), and for GPUs `smollm2-shape` (SmolLM2-135M's architecture, random weights). `make_variable_rows` draws long-tailed lengths (the benchmark's `--lengths variable`).
Used by `python benchmarks/throughput.py` and tests/test_trl_parity.py.
"""

from __future__ import annotations

import math
import random

from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from prefopt.models.load import build_tiny

SPECIALS = ["<pad>", "<s>", "</s>", "<unk>"]

MODELS = {
    "tiny": dict(vocab=4096, arch=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                       intermediate_size=256, max_position_embeddings=256)),
    "small": dict(vocab=32000, arch=dict(hidden_size=384, num_hidden_layers=4, num_attention_heads=6,
                                         intermediate_size=1536, max_position_embeddings=256)),
    # SmolLM2-135M's shape (random weights): a size where a GPU's step is arithmetic, not launch overhead
    "smollm2-shape": dict(vocab=49152, arch=dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                                                 num_key_value_heads=3, intermediate_size=1536,
                                                 max_position_embeddings=256)),
    # Mistral-7B's shape (7.24B parameters, random weights; bf16 weights + AdamW fit one H200), and the
    # same architecture at toy size for a CPU rehearsal (scripts/gpu_device_check.sh --dry-run)
    "mistral7b-shape": dict(vocab=32000, family="mistral", arch=dict(
        hidden_size=4096, num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
        intermediate_size=14336, max_position_embeddings=4096)),
    "mistral-toy": dict(vocab=4096, family="mistral", arch=dict(
        hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        intermediate_size=224, max_position_embeddings=4096)),
}


def word_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """Word-level tokenizer: <pad>=0 <s>=1 </s>=2 <unk>=3, "w{i}"=i; BOS is prepended to single texts."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    vocab.update({f"w{i}": i for i in range(len(SPECIALS), vocab_size)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


def words(rng: random.Random, n: int, vocab_size: int) -> str:
    return " ".join(f"w{rng.randrange(len(SPECIALS), vocab_size)}" for _ in range(n))


def make_rows(n_pairs: int, prompt_tokens: int, response_tokens: int, vocab_size: int, seed: int = 0) -> list[dict]:
    """Rows whose prompt is `prompt_tokens` ids with BOS and each response `response_tokens` with EOS.

    Responses start with a space so that prompt + response splits into the same words (TRL tokenizes
    the concatenated text).
    """
    rng = random.Random(seed)
    return [
        {
            "prompt": words(rng, prompt_tokens - 1, vocab_size),
            "chosen": " " + words(rng, response_tokens - 1, vocab_size),
            "rejected": " " + words(rng, response_tokens - 1, vocab_size),
        }
        for _ in range(n_pairs)
    ]


# Long-tailed lengths like UltraFeedback's (prompts and responses log-normal, a pair's two responses
# correlated in length, as answers to one prompt are): medians 48 and 64 tokens, capped below.
PROMPT_MEDIAN, PROMPT_SIGMA = 48, 0.8
RESPONSE_MEDIAN, RESPONSE_SIGMA, RESPONSE_PAIR_CORR = 64, 0.7, 0.5


def variable_lengths(n_pairs: int, max_prompt: int, max_total: int, seed: int = 0) -> list[tuple[int, int, int]]:
    """(prompt, chosen, rejected) token counts (prompt with BOS, responses with EOS), log-normal and
    capped: prompt <= max_prompt, prompt + each response <= max_total, every part >= 2 tokens."""
    rng = random.Random(seed)
    shared, own = RESPONSE_PAIR_CORR ** 0.5, (1 - RESPONSE_PAIR_CORR) ** 0.5
    out = []
    for _ in range(n_pairs):
        p = max(2, min(max_prompt, round(PROMPT_MEDIAN * math.exp(PROMPT_SIGMA * rng.gauss(0, 1)))))
        z = rng.gauss(0, 1)
        c, r = (max(2, min(max_total - p, round(RESPONSE_MEDIAN * math.exp(
            RESPONSE_SIGMA * (shared * z + own * rng.gauss(0, 1)))))) for _ in range(2))
        out.append((p, c, r))
    return out


def make_variable_rows(n_pairs: int, vocab_size: int, max_prompt: int, max_total: int,
                       seed: int = 0) -> list[dict]:
    """Rows with `variable_lengths` token counts (tokenized exactly so: no truncation on either side)."""
    rng = random.Random(seed + 1)
    return [
        {"prompt": words(rng, p - 1, vocab_size), "chosen": " " + words(rng, c - 1, vocab_size),
         "rejected": " " + words(rng, r - 1, vocab_size)}
        for p, c, r in variable_lengths(n_pairs, max_prompt, max_total, seed)
    ]


def build_model(name: str, seed: int = 0, device: str = "cpu", dtype=None):
    """(model, tokenizer) of a benchmark size, randomly initialised from `seed`, on `device` (built there:
    a 7B model is never materialised on the CPU; "meta": shapes only) in `dtype` (default float32)."""
    import torch

    spec = MODELS[name]
    tokenizer = word_tokenizer(spec["vocab"])
    if spec.get("family") != "mistral" and device == "cpu" and dtype in (None, torch.float32):
        return build_tiny(tokenizer, seed=seed, **spec["arch"]), tokenizer  # as before, bit for bit
    if spec.get("family") == "mistral":
        from transformers import MistralConfig, MistralForCausalLM as Model

        config = MistralConfig(vocab_size=len(tokenizer), tie_word_embeddings=False, sliding_window=None,
                               bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                               pad_token_id=tokenizer.pad_token_id, **spec["arch"])
    else:
        from transformers import LlamaConfig, LlamaForCausalLM as Model

        arch = dict(spec["arch"])
        arch.setdefault("num_key_value_heads", arch["num_attention_heads"])
        config = LlamaConfig(vocab_size=len(tokenizer), tie_word_embeddings=True,
                             bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                             pad_token_id=tokenizer.pad_token_id, **arch)
    previous = torch.get_default_dtype()
    try:
        torch.set_default_dtype(dtype or torch.float32)
        with torch.random.fork_rng(devices=[]), torch.device(device):
            torch.manual_seed(seed)
            if device.startswith("cuda"):
                torch.cuda.manual_seed(seed)
            model = Model(config)
    finally:
        torch.set_default_dtype(previous)
    return model, tokenizer


def n_params(model) -> int:
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
