"""Our losses equal TRL 1.16's on identical inputs: DPO (sigmoid) and IPO against DPOTrainer, SimPO
against trl.experimental.cpo.CPOTrainer (loss_type="simpo", cpo_alpha=0). The same pairs go through
TRL's tokenization and collator and through ours (the ids are checked equal), the same policy and
reference score them, and the batch losses must agree. Skipped when TRL is not installed
(`pip install -e ".[trl]"`)."""

import copy
import math
import os
import random
import warnings

import pytest
import torch

trl = pytest.importorskip("trl")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from datasets import Dataset  # noqa: E402

from prefopt.data.datamodule import PreferenceDataModule  # noqa: E402
from prefopt.losses import DPOLoss, IPOLoss, PairLogps, SimPOLoss  # noqa: E402
from prefopt.models.load import build_tiny  # noqa: E402
from prefopt.train.module import PreferenceModule  # noqa: E402
from prefopt.tasks.sort import build_sort_tokenizer  # noqa: E402

N = 4
COMMON = dict(use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False, report_to=[],
              per_device_train_batch_size=N, max_length=64, disable_tqdm=True)


def rows():
    rng = random.Random(0)
    out = []
    for _ in range(N):
        digits = "".join(rng.choice("0123456789") for _ in range(rng.randint(3, 7)))
        good = "".join(sorted(digits))
        out.append({"prompt": digits + ">", "chosen": good, "rejected": good[::-1] + rng.choice("0123456789")})
    return out


def moved_policy():
    """(sort tokenizer, a tiny starting policy, a copy moved away from it), so losses are not at their start."""
    tok = build_sort_tokenizer()
    start = build_tiny(tok, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                       max_position_embeddings=64, seed=0)
    policy = copy.deepcopy(start)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(1)
        for p in policy.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))
    return tok, start, policy


@pytest.fixture(scope="module")
def setup():
    """(tokenizer, starting policy, trained-looking policy, our batch of the rows)."""
    tok, start, policy = moved_policy()
    dm = PreferenceDataModule(rows(), [], tok, max_length=64, max_prompt_length=32, batch_size=N,
                              eval_batch_size=N, seed=0)
    return tok, start, policy, next(iter(dm.loader("train")))


def ours(policy, start, loss, batch):
    module = PreferenceModule(copy.deepcopy(policy), loss, reference=copy.deepcopy(start).eval())
    with torch.no_grad():
        return module.loss_fn(module.pair_logps(batch)).losses.mean()


@pytest.mark.parametrize("loss_type,make_loss", [("sigmoid", lambda: DPOLoss(beta=0.3)),
                                                  ("ipo", lambda: IPOLoss(beta=0.3))])
def test_dpo_and_ipo_equal_trl_dpo_trainer(setup, tmp_path, loss_type, make_loss):
    from trl import DPOConfig, DPOTrainer

    tok, start, policy, batch = setup
    config = DPOConfig(output_dir=str(tmp_path), loss_type=[loss_type], beta=0.3, **COMMON)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = DPOTrainer(model=copy.deepcopy(policy), ref_model=copy.deepcopy(start).eval(), args=config,
                             train_dataset=Dataset.from_list(rows()), processing_class=tok)
    theirs = trainer.data_collator([trainer.train_dataset[i] for i in range(N)])
    width = theirs["input_ids"].shape[1]
    assert torch.equal(batch["input_ids"][:, :width], theirs["input_ids"])  # identical inputs
    assert torch.equal(batch["score_mask"][:, :width], theirs["completion_mask"])
    trainer.model.eval()
    with torch.no_grad():
        trl_loss = trainer.compute_loss(trainer.model, theirs)
    our_loss = ours(policy, start, make_loss(), batch)
    at_start = math.log(2.0) if loss_type == "sigmoid" else (1 / (2 * 0.3)) ** 2  # policy = reference
    assert abs(float(our_loss) - at_start) > 1e-3
    torch.testing.assert_close(our_loss, trl_loss.float(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_simpo_equals_trl_cpo_trainer(setup, tmp_path, label_smoothing):
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    tok, start, policy, batch = setup
    beta, ratio = 2.0, 0.4
    config = CPOConfig(output_dir=str(tmp_path), loss_type="simpo", cpo_alpha=0.0, beta=beta,
                       simpo_gamma=beta * ratio, label_smoothing=label_smoothing, **COMMON)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = CPOTrainer(model=copy.deepcopy(policy), args=config, train_dataset=Dataset.from_list(rows()),
                             processing_class=tok)
    theirs = trainer.data_collator([trainer.train_dataset[i] for i in range(N)])
    for side, rows_ in (("chosen", slice(0, N)), ("rejected", slice(N, 2 * N))):  # identical inputs
        width = theirs[f"{side}_input_ids"].shape[1]
        assert torch.equal(batch["input_ids"][rows_, :width], theirs[f"{side}_input_ids"])
        assert torch.equal(batch["score_mask"][rows_, :width].bool(), theirs[f"{side}_labels"] != -100)
    trainer.model.eval()
    with torch.no_grad():
        trl_loss, _ = trainer.get_batch_loss_metrics(trainer.model, theirs)
    loss = SimPOLoss(beta=beta, gamma_beta_ratio=ratio, label_smoothing=label_smoothing)
    torch.testing.assert_close(ours(policy, start, loss, batch), trl_loss.float(), rtol=1e-5, atol=1e-6)

    # and on hand-made log-probs: CPO's loss takes length-averaged log-probs
    s = torch.tensor([-3.0, -8.0, -1.5]), torch.tensor([-4.0, -6.0, -9.0])
    n = torch.tensor([3, 4, 2]), torch.tensor([2, 5, 6])
    trl_losses, _, _ = trainer.cpo_loss(s[0] / n[0], s[1] / n[1])
    out = loss(PairLogps(chosen=s[0], rejected=s[1], chosen_tokens=n[0], rejected_tokens=n[1]))
    torch.testing.assert_close(out.losses, trl_losses)
