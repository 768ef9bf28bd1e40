"""Small builders shared by tests: a tiny model with a fixed vocabulary and hand-made batches."""


import torch

from prefopt.models.load import build_tiny

VOCAB = 32
PAD, BOS, EOS = 0, 1, 2


def tiny_model(seed: int = 0, layers: int = 1):
    tok = type("Tok", (), {"bos_token_id": BOS, "eos_token_id": EOS, "pad_token_id": PAD, "__len__": lambda self: VOCAB})()
    return build_tiny(tok, hidden_size=32, num_hidden_layers=layers, num_attention_heads=2,
                      intermediate_size=64, max_position_embeddings=64, seed=seed)


def optim(**settings):
    """PreferenceModule's `optimizer` and `scheduler` keywords: conf/train.yaml's AdamW and warmup + cosine with
    `settings` (lr, warmup_ratio, ...) changed, e.g. `PreferenceModule(model, loss, **optim(lr=1e-2))`."""
    from prefopt.train.optim import default_factories

    optimizer, scheduler = default_factories(**settings)
    return {"optimizer": optimizer, "scheduler": scheduler}


def pair_batch(pairs):
    """Collate [(prompt, chosen, rejected), ...] token lists by hand into the module's batch layout."""
    rows = [(p, c) for p, c, _ in pairs] + [(p, r) for p, _, r in pairs]
    L = max(len(p) + len(y) for p, y in rows)
    R = max(len(y) for _, y in rows) + 1
    n = len(rows)
    batch = {k: torch.zeros(n, L, dtype=torch.long) for k in ("input_ids", "attention_mask", "score_mask")}
    for k in ("marginal_input_ids", "marginal_attention_mask", "marginal_score_mask"):
        batch[k] = torch.zeros(n, R, dtype=torch.long)
    for i, (p, y) in enumerate(rows):
        seq = p + y
        batch["input_ids"][i, : len(seq)] = torch.tensor(seq)
        batch["attention_mask"][i, : len(seq)] = 1
        batch["score_mask"][i, len(p) : len(seq)] = 1
        batch["marginal_input_ids"][i, : len(y) + 1] = torch.tensor([BOS] + y)
        batch["marginal_attention_mask"][i, : len(y) + 1] = 1
        batch["marginal_score_mask"][i, 1 : len(y) + 1] = 1
    batch["index"] = torch.arange(len(pairs))
    return batch


PAIRS = [
    ([BOS, 5, 6, 7], [8, 9, EOS], [10, EOS]),
    ([BOS, 11], [12, 13, 14, 15, EOS], [16, 17, EOS]),
    ([BOS, 3, 4, 5, 6, 7, 8], [EOS], [20, 21, 22, EOS]),
]


def collated(pairs):
    """[(prompt, chosen, rejected), ...] through the real PairCollator (pad 0, start [BOS])."""
    from prefopt.data.collate import PairCollator
    from prefopt.scoring.marginal import MarginalRows

    items = [{"prompt_ids": p, "chosen_ids": c, "rejected_ids": r, "index": i} for i, (p, c, r) in enumerate(pairs)]
    return PairCollator(pad_id=PAD, marginal=MarginalRows([BOS]))(items)


def assert_same_gradients(model, expected, actual, rtol: float = 1e-4, atol: float = 1e-5) -> None:
    """The gradients of Σ (i+1)·expected[i] and Σ (i+1)·actual[i] (two ways of computing the same
    per-sequence log-probs) agree on every trainable weight of `model`."""
    import torch

    weights = [p for p in model.parameters() if p.requires_grad]
    scale = torch.arange(1.0, len(expected) + 1.0, device=expected.device)
    g_expected = torch.autograd.grad((expected * scale).sum(), weights, allow_unused=True)
    g_actual = torch.autograd.grad((actual * scale).sum(), weights, allow_unused=True)
    for a, b in zip(g_expected, g_actual):
        if a is not None or b is not None:
            torch.testing.assert_close(b, a, rtol=rtol, atol=atol)


# variable lengths: prompts of 1-9 tokens, responses of 1-7, longer than the 3-token sliding window below
VARIABLE = PAIRS + [([BOS, 3, 9, 4, 9, 5, 9, 6, 9], [11, 12, 13, 14, 15, 16, EOS], [17, EOS])]
COMMON = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              intermediate_size=64, max_position_embeddings=64, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
FAMILIES = {
    "llama": None,  # the project's tiny model (prefopt.models.load.build_tiny)
    "mistral": ("MistralConfig", "MistralForCausalLM", {}),
    "mistral-window3": ("MistralConfig", "MistralForCausalLM", {"sliding_window": 3}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"head_dim": 8, "final_logit_softcapping": 0.5}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {}),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", {}),
}


def family_model(name: str, attention: str = "sdpa") -> torch.nn.Module:
    """A randomly initialised tiny model of one of FAMILIES, in eval mode, with `attention`."""
    import transformers

    if FAMILIES[name] is None:
        model = tiny_model(layers=2)
    else:
        config_class, model_class, extra = FAMILIES[name]
        if name == "gpt2":  # absolute positions: the position ids are all that places a packed token
            config = transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64,
                                             bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
        else:
            config = getattr(transformers, config_class)(**COMMON, **extra)
        torch.manual_seed(0)
        model = getattr(transformers, model_class)(config)
    model.set_attn_implementation(attention)
    return model.eval()
