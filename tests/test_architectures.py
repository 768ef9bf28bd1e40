"""The log-prob passes on tiny random models of the families the project is used with: Mistral, Qwen2,
Gemma 2 and 3, Phi-3, and Cohere and Granite (which scale their logits after the head). For each:
our log-probs equal the model's own logits' log-softmax, the shared-prompt pass equals full rows in
values and gradients (1e-5), the `share_prompt=auto` self-check accepts it, a sliding window shorter
than a batch makes the pass score full rows, and `disable_dropout` silences every configured dropout."""

import pytest
import torch
import transformers
from omegaconf import OmegaConf

from helpers import BOS, EOS, PAD, PAIRS, VOCAB, assert_same_gradients, collated
from prefopt.scoring.logps import attention_window, response_logps
from prefopt.scoring.sharing import check_shared_prompt
from prefopt.scoring.layout import pair_batch_logps
from prefopt.scoring.shared import shared_prompt_logps
from prefopt.models.setup import prepare_for_training

COMMON = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
              intermediate_size=64, max_position_embeddings=64, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD)
FAMILIES = {  # config class, model class, settings that make the family's peculiarity visible at this size
    "mistral": ("MistralConfig", "MistralForCausalLM", {}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"head_dim": 8, "final_logit_softcapping": 0.5}),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", {"head_dim": 8, "final_logit_softcapping": 0.5}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {}),
    "cohere": ("CohereConfig", "CohereForCausalLM", {"logit_scale": 0.0625}),
    "granite": ("GraniteConfig", "GraniteForCausalLM", {"logits_scaling": 4.0}),
}


def family_model(name: str, dropout: float = 0.0, **overrides) -> torch.nn.Module:
    config_class, model_class, extra = FAMILIES[name]
    config = getattr(transformers, config_class)(**COMMON, **{**extra, **overrides})
    for key, value in config.to_dict().items():  # every dropout the family configures
        if isinstance(value, float) and ("dropout" in key or key.endswith("pdrop")):
            setattr(config, key, dropout)
    torch.manual_seed(0)
    return getattr(transformers, model_class)(config)


def model_logps(model, b):
    """Summed log-probs from the model's own forward (its logits, after any scaling or soft cap)."""
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
    lp = torch.log_softmax(logits.float(), -1).gather(-1, b["input_ids"][:, 1:, None]).squeeze(-1)
    return (lp * b["score_mask"][:, 1:]).sum(1)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_logps_are_the_models_own(name):
    model = family_model(name).eval()
    b = collated(PAIRS)
    ours, _ = response_logps(model, b["input_ids"], b["attention_mask"], b["score_mask"])
    torch.testing.assert_close(ours, model_logps(model, b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(FAMILIES))
def test_shared_prompt_pass_equals_full_rows_values_and_gradients(name):
    model = family_model(name).eval()
    b = collated(PAIRS)
    full, n_full = response_logps(model, b["input_ids"], b["attention_mask"], b["score_mask"])
    shared, n_shared = shared_prompt_logps(model, b["prompt_ids"], b["prompt_attention_mask"], b["response_ids"],
                                           b["response_attention_mask"])
    torch.testing.assert_close(shared, full, rtol=1e-5, atol=1e-5)
    assert n_shared.tolist() == n_full.tolist()
    assert_same_gradients(model, full, shared)
    assert check_shared_prompt(model, b) is None


@pytest.mark.parametrize("name", ["mistral", "gemma2", "gemma3", "phi3"])
def test_a_sliding_window_shorter_than_the_batch_scores_full_rows(name):
    """Window 3 < padded prompt 7 + response 5: the shared pass would place the window by padded
    positions (0.05-0.15 nats off per token), so the batch is scored on full rows."""
    model = family_model(name, sliding_window=3).eval()
    assert attention_window(model) == 3 and attention_window(family_model("qwen2")) is None
    b = collated(PAIRS)
    shared, _ = pair_batch_logps(model, b, share_prompt=True)
    torch.testing.assert_close(shared, model_logps(model, b), rtol=1e-5, atol=1e-5)
    assert check_shared_prompt(model, b) is None


def test_the_self_check_compares_tokens_not_sums():
    """One token 0.01 nats off is a mismatch even where the row sums would pass a loose tolerance."""
    import prefopt.scoring.shared as logps_file

    model = family_model("mistral").eval()
    b = collated(PAIRS)
    real = logps_file.shared_prompt_logps

    def one_token_off(*args, **kwargs):
        out, rows = real(*args, **kwargs)
        return out + (torch.arange(out.numel()) == 2) * 0.01, rows

    logps_file.shared_prompt_logps = one_token_off
    try:
        problem = check_shared_prompt(model, b)
    finally:
        logps_file.shared_prompt_logps = real
    assert problem.startswith("per-token log-probs differ by up to 0.01")


@pytest.mark.parametrize("name", list(FAMILIES))
def test_disable_dropout_silences_every_configured_dropout(name):
    """Each family with all its dropouts at 0.1: two training-mode passes differ, until disable_dropout."""
    b = collated(PAIRS)
    for disable in (False, True):
        model = prepare_for_training(family_model(name, dropout=0.1), OmegaConf.create({"disable_dropout": disable}))
        model.train()
        passes = []
        for seed in (1, 2):
            torch.manual_seed(seed)
            passes.append(pair_batch_logps(model, b, share_prompt=False)[0])
        assert torch.equal(passes[0], passes[1]) is disable, (name, disable)
