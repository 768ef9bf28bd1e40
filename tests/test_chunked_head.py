"""The chunked LM head (prefopt/scoring/chunked_head.py, `model.chunked_head`): log-probs and gradients equal
to the full logits' log_softmax + gather (random inputs; the project's tiny Llama with its tied embedding;
Gemma 2's soft cap; LoRA), the (tokens × vocabulary) logits never built, and which models it is on for."""

import copy

import pytest
import torch
from omegaconf import OmegaConf
from torch.utils._python_dispatch import TorchDispatchMode

from helpers import PAIRS, assert_same_gradients, family_model, pair_batch, tiny_model
from prefopt.errors import ConfigError
from prefopt.scoring.chunked_head import MARK, chunked_head_logps, enable_chunked_head
from prefopt.models.setup import prepare_for_training
from prefopt.scoring.layout import pair_batch_logps
from prefopt.scoring.logps import ScaledHead


def full_logps(head, states, targets):
    """Today's reference: the whole (K, V) logits, log_softmax in float32, gather."""
    return torch.log_softmax(head(states).float(), dim=-1).gather(-1, targets[:, None]).squeeze(-1)


def marked_linear(vocab, hidden, bias=False, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    head = torch.nn.Linear(hidden, vocab, bias=bias, dtype=dtype)
    setattr(head, MARK, True)
    return head


def grads_of(fn, head, states, targets, weights):
    """(log-probs, d/d states, d/d weight[, d/d bias]) of Σ weights·log p."""
    states = states.detach().requires_grad_(True)
    out = fn(head, states, targets)
    grads = torch.autograd.grad((out * weights).sum(), [states, *head.parameters()])
    return out.detach(), grads


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("scale", [None, (0.5, None), (1.0, 3.0)])
def test_equal_to_full_logits_on_random_inputs(bias, scale):
    head = marked_linear(vocab=1000, hidden=16, bias=bias)
    if scale is not None:
        head = ScaledHead(head, *scale)
    torch.manual_seed(1)
    states, targets, weights = torch.randn(37, 16) * 3, torch.randint(0, 1000, (37,)), torch.randn(37)

    # 3000 logits a chunk: 3 positions per forward chunk, 128-entry vocabulary blocks in the backward
    def chunked(h, s, t):
        return chunked_head_logps(h, s, t, chunk_elements=3000)

    ref, ref_grads = grads_of(full_logps, head, states, targets, weights)
    ours, our_grads = grads_of(chunked, head, states, targets, weights)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)
    for a, b in zip(our_grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_bf16_weights_are_as_close_to_float32_as_the_full_bf16_logits():
    head16 = marked_linear(vocab=2048, hidden=64, dtype=torch.bfloat16)
    head32 = copy.deepcopy(head16).float()
    torch.manual_seed(2)
    states, targets, weights = torch.randn(50, 64, dtype=torch.bfloat16), torch.randint(0, 2048, (50,)), torch.randn(50)
    exact, exact_grads = grads_of(full_logps, head32, states.float(), targets, weights)
    full, full_grads = grads_of(full_logps, head16, states, targets, weights)
    ours, our_grads = grads_of(lambda h, s, t: chunked_head_logps(h, s, t, chunk_elements=4096), head16, states,
                               targets, weights)
    assert ours.dtype == torch.float32 and our_grads[0].dtype == our_grads[1].dtype == torch.bfloat16
    assert (ours - exact).abs().max() <= 1.5 * (full - exact).abs().max() + 1e-3
    for a, b, c in zip(our_grads, full_grads, exact_grads):
        assert (a.float() - c).abs().max() <= 1.5 * (b.float() - c).abs().max() + 1e-3


def test_under_autocast_the_matmul_is_bf16_and_the_float32_weight_gets_its_gradient():
    head = marked_linear(vocab=512, hidden=32)
    torch.manual_seed(3)
    states, targets, weights = torch.randn(20, 32), torch.randint(0, 512, (20,)), torch.randn(20)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        full, full_grads = grads_of(full_logps, head, states, targets, weights)
        ours, our_grads = grads_of(chunked_head_logps, head, states, targets, weights)
    assert our_grads[1].dtype == torch.float32
    torch.testing.assert_close(ours, full, rtol=0, atol=2e-2)
    for a, b in zip(our_grads, full_grads):
        torch.testing.assert_close(a, b, rtol=0, atol=2e-2)


def test_tiny_llama_with_its_tied_embedding_gets_equal_logps_and_gradients():
    model = tiny_model(layers=2)
    assert model.get_output_embeddings().weight is model.get_input_embeddings().weight  # tied
    batch = pair_batch(PAIRS)
    expected, _ = pair_batch_logps(model, batch, share_prompt=False)
    assert enable_chunked_head(model, True)
    actual, _ = pair_batch_logps(model, batch, share_prompt=False)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    assert_same_gradients(model, expected, actual, rtol=1e-5, atol=1e-5)
    shared, _ = pair_batch_logps(model, batch, share_prompt=True)  # the prompt-once layout too
    torch.testing.assert_close(shared, expected, rtol=1e-5, atol=1e-5)


def test_against_model_logits_the_way_the_issue_states_it():
    """model(...).logits → log_softmax → gather, the scored tokens summed per row."""
    model = tiny_model(layers=2)
    enable_chunked_head(model, True)
    b = pair_batch(PAIRS)
    ours, _ = pair_batch_logps(model, b, share_prompt=False)
    logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
    lp = torch.log_softmax(logits.float(), -1).gather(-1, b["input_ids"][:, 1:, None]).squeeze(-1)
    torch.testing.assert_close(ours, (lp * b["score_mask"][:, 1:]).sum(1), rtol=1e-5, atol=1e-5)


def test_gemma2_soft_cap_and_a_lora_policy():
    model = family_model("gemma2", attention="eager").train()
    batch = pair_batch(PAIRS)
    expected, _ = pair_batch_logps(model, batch, share_prompt=False)
    enable_chunked_head(model, True)
    actual, _ = pair_batch_logps(model, batch, share_prompt=False)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    assert_same_gradients(model, expected, actual, rtol=1e-5, atol=1e-5)

    lora = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}
    marked = prepare_for_training(tiny_model(layers=2), OmegaConf.create(dict(chunked_head=True, lora=lora)))
    assert getattr(marked.get_output_embeddings(), MARK) is True  # peft delegates to the marked base head
    policy = prepare_for_training(tiny_model(layers=2), OmegaConf.create(dict(chunked_head=False, lora=lora)))
    for module in policy.modules():  # LoRA's B starts at 0: move it so its A gets a gradient
        if "lora_B" in type(module).__name__ or hasattr(module, "lora_B"):
            for b in module.lora_B.values():
                torch.nn.init.normal_(b.weight, std=0.1)
    expected, _ = pair_batch_logps(policy, batch, share_prompt=False)
    assert enable_chunked_head(policy, True)
    actual, _ = pair_batch_logps(policy, batch, share_prompt=False)
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    assert_same_gradients(policy, expected, actual, rtol=1e-5, atol=1e-5)


class LargestTensor(TorchDispatchMode):
    """The most elements any operation's output held (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def largest_tensor(fn, head, states, targets):
    states = states.detach().requires_grad_(True)
    with LargestTensor() as mode:
        fn(head, states, targets).sum().backward()
    return mode.largest


def test_the_full_logits_are_never_built():
    vocab, hidden, count = 32000, 4, 256  # (K, V) = 8.2M logits; the weight 128k
    head = marked_linear(vocab, hidden)
    states, targets = torch.randn(count, hidden), torch.randint(0, vocab, (count,))
    assert largest_tensor(full_logps, head, states, targets) >= count * vocab
    chunk = 1 << 16
    largest = largest_tensor(lambda h, s, t: chunked_head_logps(h, s, t, chunk_elements=chunk), head, states, targets)
    assert largest <= max(chunk, vocab * hidden) < count * vocab // 16


def test_the_hook_takes_the_chunked_path_only_when_marked(monkeypatch):
    from prefopt.scoring import chunked_head

    calls = []
    apply = chunked_head.ChunkedHeadLogProb.apply
    monkeypatch.setattr(chunked_head.ChunkedHeadLogProb, "apply", lambda *a: calls.append(1) or apply(*a))
    model, batch = tiny_model(), pair_batch(PAIRS)
    pair_batch_logps(model, batch, share_prompt=False)  # unmarked: today's path
    assert calls == []
    enable_chunked_head(model, True)
    pair_batch_logps(model, batch, share_prompt=False)
    with torch.no_grad():  # a reference / table pass without gradients
        pair_batch_logps(model, batch, share_prompt=False)
    assert calls == [1, 1]


def test_auto_is_on_from_32000_entries_and_off_for_the_tiny_model():
    tiny = tiny_model()
    assert not enable_chunked_head(tiny, "auto") and getattr(tiny.get_output_embeddings(), MARK) is False
    assert enable_chunked_head(tiny, True) and not enable_chunked_head(tiny, False)
    big = tiny_model()
    big.lm_head = torch.nn.Linear(32, 32000, bias=False)
    assert enable_chunked_head(big, "auto")
    assert getattr(copy.deepcopy(big).get_output_embeddings(), MARK) is True  # the frozen reference keeps it
    prepared = prepare_for_training(tiny_model(), OmegaConf.create(dict(chunked_head="auto")))
    assert getattr(prepared.get_output_embeddings(), MARK) is False  # model=tiny: today's path


def test_a_bad_setting_is_one_line_naming_the_key():
    with pytest.raises(ConfigError, match=r"^model.chunked_head='yes': true, false or auto$"):
        enable_chunked_head(tiny_model(), "yes")
    no_linear = tiny_model()
    no_linear.get_output_embeddings = lambda: None
    with pytest.raises(ConfigError, match=r"^model.chunked_head=true needs an nn.Linear LM head"):
        enable_chunked_head(no_linear, True)
    assert not enable_chunked_head(no_linear, "auto")


def test_without_gradients_equal_and_no_graph():
    head = marked_linear(vocab=700, hidden=8)
    states, targets = torch.randn(30, 8), torch.randint(0, 700, (30,))
    with torch.no_grad():
        ours = chunked_head_logps(head, states, targets, chunk_elements=1000)
    assert ours.grad_fn is None
    torch.testing.assert_close(ours, full_logps(head, states, targets).detach(), rtol=1e-5, atol=1e-5)
