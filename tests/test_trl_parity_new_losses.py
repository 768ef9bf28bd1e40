"""The five losses of issue 29 against independent implementations of their formulas, to 1e-6:

- ORPO: TRL 1.16's `trl.experimental.orpo.ORPOTrainer.odds_ratio_loss` on random log-probs, and the whole
  trainer on one batch (the odds-ratio part and its metrics; TRL's NLL term includes the prompt, ours not);
- CPO: TRL's `trl.experimental.cpo.CPOTrainer.cpo_loss` (loss_type "sigmoid") on random log-probs, and the
  whole trainer with cpo_alpha 0 and 1; CPO-SimPO (loss_type "simpo", cpo_alpha 1) against SimPOLoss
  with sft_weight 1. The whole-trainer NLL checks use rows whose chosen responses have one length (TRL's
  NLL is a token mean over the batch, ours a mean of per-pair means: equal then);
- R-DPO: TRL has none. The paper's formula written out here with Python floats, and α = 0 against
  TRL's DPOTrainer (loss_type "sigmoid");
- SimPER: the `loss_type == "simper"` branch of liavonpenn/rmipo scripts/rmipo_trainer.py written out
  here, and our length-averaged log-probs against CPOTrainer's on the same batch;
- β-DPO: the authors' code (junkangwu/beta-DPO trainers.py: `update_and_sync_tensor_mean`, the
  "beta_DPO" branch of `preference_loss` and the masked mean of `get_batch_metrics`, single process)
  written out here and run batch after batch beside ours, filter off and on; α = 0 against TRL's DPOTrainer.

TRL's methods are called unbound on a stand-in `self` holding the attributes they read, so no trainer is
built for the random-input checks. Skipped when TRL is not installed (`pip install -e ".[trl]"`).
Run: `.venv/bin/python -m pytest tests/test_trl_parity_new_losses.py -q`.
"""

import copy
import math
import os
import random
import warnings
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

trl = pytest.importorskip("trl")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from datasets import Dataset  # noqa: E402

from prefopt.data.datamodule import PreferenceDataModule  # noqa: E402
from prefopt.losses import (  # noqa: E402
    BetaDPOLoss,
    CPOLoss,
    ORPOLoss,
    PairLogps,
    RDPOLoss,
    SimPERLoss,
    SimPOLoss,
)
from prefopt.train.module import PreferenceModule  # noqa: E402

N = 4
TOL = dict(rtol=0.0, atol=1e-6)
COMMON = dict(use_cpu=True, bf16=False, fp16=False, gradient_checkpointing=False, report_to=[],
              per_device_train_batch_size=N, max_length=64, disable_tqdm=True)
CPU = SimpleNamespace(device=torch.device("cpu"))


def rows(equal_chosen=False):
    """Sort-task pairs; with `equal_chosen` every chosen response has 5 tokens."""
    rng = random.Random(0)
    out = []
    for _ in range(N):
        digits = "".join(rng.choice("0123456789") for _ in range(5 if equal_chosen else rng.randint(3, 7)))
        good = "".join(sorted(digits))
        bad = good[::-1] + "".join(rng.choice("0123456789") for _ in range(rng.randint(0, 3)))
        out.append({"prompt": digits + ">", "chosen": good, "rejected": bad})
    return out


def random_logps(seed, n=64, dtype=torch.float32, with_ref=False):
    """Random summed log-probs (s in (-30, -0.5)) and token counts (1-20) for n pairs."""
    gen = torch.Generator().manual_seed(seed)

    def s():
        return -(0.5 + 29.5 * torch.rand(n, generator=gen, dtype=torch.float64)).to(dtype)

    def count():
        return torch.randint(1, 21, (n,), generator=gen)

    fields = dict(chosen=s(), rejected=s(), chosen_tokens=count(), rejected_tokens=count())
    if with_ref:
        fields.update(ref_chosen=s(), ref_rejected=s())
    return PairLogps(**fields)


@pytest.fixture(scope="module")
def models():
    from test_trl_parity import moved_policy

    return moved_policy()


def our_batch(tok, data):
    dm = PreferenceDataModule(data, [], tok, max_length=64, max_prompt_length=32, batch_size=N,
                              eval_batch_size=N, seed=0)
    return next(iter(dm.loader("train")))


def ours(policy, start, loss, batch):
    """Our loss output on `batch` through the training module (eval mode, no gradient)."""
    module = PreferenceModule(copy.deepcopy(policy), loss, reference=copy.deepcopy(start).eval())
    module.eval()
    with torch.no_grad():
        return module.loss_fn(module.pair_logps(batch))


def paired_trainer(cls, config, tok, policy, data):
    """A TRL CPOTrainer/ORPOTrainer and its collated batch of `data`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = cls(model=copy.deepcopy(policy), args=config, train_dataset=Dataset.from_list(data),
                      processing_class=tok)
    trainer.model.eval()
    return trainer, trainer.data_collator([trainer.train_dataset[i] for i in range(N)])


def assert_same_inputs(batch, theirs):
    for side, rows_ in (("chosen", slice(0, N)), ("rejected", slice(N, 2 * N))):
        width = theirs[f"{side}_input_ids"].shape[1]
        assert torch.equal(batch["input_ids"][rows_, :width], theirs[f"{side}_input_ids"])
        assert torch.equal(batch["score_mask"][rows_, :width].bool(), theirs[f"{side}_labels"] != -100)


def trl_dpo_loss(tmp_path, tok, start, policy, batch, beta):
    from trl import DPOConfig, DPOTrainer

    config = DPOConfig(output_dir=str(tmp_path), loss_type=["sigmoid"], beta=beta, **COMMON)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = DPOTrainer(model=copy.deepcopy(policy), ref_model=copy.deepcopy(start).eval(), args=config,
                             train_dataset=Dataset.from_list(rows()), processing_class=tok)
    theirs = trainer.data_collator([trainer.train_dataset[i] for i in range(N)])
    width = theirs["input_ids"].shape[1]
    assert torch.equal(batch["input_ids"][:, :width], theirs["input_ids"])
    trainer.model.eval()
    with torch.no_grad():
        return trainer.compute_loss(trainer.model, theirs).float()


# ---- ORPO ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_orpo_equals_trl_odds_ratio_loss_on_random_logps(beta):
    from trl.experimental.orpo import ORPOTrainer

    logps = random_logps(seed=0)
    w, l = logps.chosen / logps.chosen_tokens, logps.rejected / logps.rejected_tokens
    trl_losses, trl_chosen, trl_rejected, ratio, log_odds = ORPOTrainer.odds_ratio_loss(
        SimpleNamespace(beta=beta, accelerator=CPU), w, l)
    out = ORPOLoss(beta=beta)(logps)
    torch.testing.assert_close(out.losses, -w - trl_losses, **TOL)  # TRL: loss = nll - losses.mean()
    torch.testing.assert_close(out.chosen_rewards, trl_chosen, **TOL)
    torch.testing.assert_close(out.rejected_rewards, trl_rejected, **TOL)
    torch.testing.assert_close(out.metrics["log_odds_ratio"], ratio, **TOL)
    torch.testing.assert_close(out.metrics["log_odds_chosen"], log_odds, **TOL)


def test_orpo_equals_trl_orpo_trainer_on_a_batch(models, tmp_path):
    from trl.experimental.orpo import ORPOConfig, ORPOTrainer

    tok, start, policy = models
    data = rows()
    config = ORPOConfig(output_dir=str(tmp_path), beta=0.1, **COMMON)
    trainer, theirs = paired_trainer(ORPOTrainer, config, tok, policy, data)
    batch = our_batch(tok, data)
    assert_same_inputs(batch, theirs)
    with torch.no_grad():
        trl_loss, trl_metrics = trainer.get_batch_loss_metrics(trainer.model, theirs)
    out = ours(policy, start, ORPOLoss(beta=0.1), batch)
    # the odds-ratio part: TRL's loss minus its NLL (which includes the prompt tokens) equals ours minus ours
    torch.testing.assert_close(out.losses.mean() - out.metrics["nll_loss"],
                               (trl_loss - trl_metrics["nll_loss"]).float(), **TOL)
    for key in ("log_odds_ratio", "log_odds_chosen", "rewards/chosen", "rewards/rejected"):
        mine = out.metrics[key] if key in out.metrics else getattr(out, key.replace("rewards/", "") + "_rewards").mean()
        torch.testing.assert_close(mine, torch.as_tensor(trl_metrics[key]).float(), **TOL)


# ---- CPO -------------------------------------------------------------------------------------------


def cpo_stub(loss_type="sigmoid", beta=0.1, label_smoothing=0.0, simpo_gamma=0.5):
    return SimpleNamespace(alpha=0.0, loss_type=loss_type, beta=beta, label_smoothing=label_smoothing,
                           simpo_gamma=simpo_gamma, accelerator=CPU)


@pytest.mark.parametrize("beta, cpo_alpha, label_smoothing", [(0.1, 1.0, 0.0), (0.3, 0.5, 0.2), (0.1, 0.0, 0.0)])
def test_cpo_equals_trl_cpo_loss_on_random_logps(beta, cpo_alpha, label_smoothing):
    from trl.experimental.cpo import CPOTrainer

    logps = random_logps(seed=1)
    trl_losses, trl_chosen, trl_rejected = CPOTrainer.cpo_loss(
        cpo_stub(beta=beta, label_smoothing=label_smoothing), logps.chosen, logps.rejected)
    out = CPOLoss(beta=beta, cpo_alpha=cpo_alpha, label_smoothing=label_smoothing)(logps)
    nll = -logps.chosen / logps.chosen_tokens
    torch.testing.assert_close(out.losses, trl_losses + cpo_alpha * nll, **TOL)
    torch.testing.assert_close(out.chosen_rewards, trl_chosen, **TOL)
    torch.testing.assert_close(out.rejected_rewards, trl_rejected, **TOL)


@pytest.mark.parametrize("cpo_alpha", [0.0, 1.0])
def test_cpo_equals_trl_cpo_trainer_on_a_batch(models, tmp_path, cpo_alpha):
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    tok, start, policy = models
    data = rows(equal_chosen=True)
    config = CPOConfig(output_dir=str(tmp_path), loss_type="sigmoid", beta=0.1, cpo_alpha=cpo_alpha, **COMMON)
    trainer, theirs = paired_trainer(CPOTrainer, config, tok, policy, data)
    batch = our_batch(tok, data)
    assert_same_inputs(batch, theirs)
    with torch.no_grad():
        trl_loss, _ = trainer.get_batch_loss_metrics(trainer.model, theirs)
    out = ours(policy, start, CPOLoss(beta=0.1, cpo_alpha=cpo_alpha), batch)
    torch.testing.assert_close(out.losses.mean(), trl_loss.float(), **TOL)


def test_cpo_simpo_variant_equals_simpo_with_an_sft_term(models, tmp_path):
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    tok, start, policy = models
    data = rows(equal_chosen=True)
    beta, ratio = 2.0, 0.4
    config = CPOConfig(output_dir=str(tmp_path), loss_type="simpo", beta=beta, simpo_gamma=beta * ratio,
                       cpo_alpha=1.0, **COMMON)
    trainer, theirs = paired_trainer(CPOTrainer, config, tok, policy, data)
    batch = our_batch(tok, data)
    assert_same_inputs(batch, theirs)
    with torch.no_grad():
        trl_loss, _ = trainer.get_batch_loss_metrics(trainer.model, theirs)
    out = ours(policy, start, SimPOLoss(beta=beta, gamma_beta_ratio=ratio, sft_weight=1.0), batch)
    torch.testing.assert_close(out.losses.mean(), trl_loss.float(), **TOL)


# ---- R-DPO -----------------------------------------------------------------------------------------


def rdpo_by_the_paper(sw, sl, rw, rl, nw, nl, beta, alpha):
    """Park et al. 2024: -log σ(β log π(y_w)/π_ref(y_w) - β log π(y_l)/π_ref(y_l) + (α|y_w| - α|y_l|))."""
    z = beta * (sw - rw) - beta * (sl - rl) + (alpha * nw - alpha * nl)
    return max(-z, 0.0) + math.log1p(math.exp(-abs(z)))  # -log σ(z), stable


@pytest.mark.parametrize("beta, alpha", [(0.1, 0.2), (0.5, 0.01), (0.05, 1.0)])
def test_rdpo_equals_the_papers_formula_on_random_logps(beta, alpha):
    logps = random_logps(seed=2, dtype=torch.float64, with_ref=True)
    out = RDPOLoss(beta=beta, alpha=alpha)(logps)
    columns = zip(*(t.tolist() for t in (logps.chosen, logps.rejected, logps.ref_chosen, logps.ref_rejected,
                                         logps.chosen_tokens, logps.rejected_tokens)))
    expected = torch.tensor([rdpo_by_the_paper(*c, beta, alpha) for c in columns], dtype=torch.float64)
    torch.testing.assert_close(out.losses, expected, **TOL)
    torch.testing.assert_close(out.chosen_rewards, beta * (logps.chosen - logps.ref_chosen), **TOL)


def test_rdpo_without_its_length_term_equals_trl_dpo(models, tmp_path):
    tok, start, policy = models
    batch = our_batch(tok, rows())
    trl_loss = trl_dpo_loss(tmp_path, tok, start, policy, batch, beta=0.3)
    torch.testing.assert_close(ours(policy, start, RDPOLoss(beta=0.3, alpha=0.0), batch).losses.mean(), trl_loss, **TOL)


# ---- SimPER ----------------------------------------------------------------------------------------


def simper_as_in_rmipo_trainer(policy_chosen_logps, policy_rejected_logps):
    """liavonpenn/rmipo scripts/rmipo_trainer.py, SimPOTrainer.simpo_loss, `loss_type == "simper"`
    (inputs: length-averaged log-probs)."""
    chosen_perplexity = torch.exp(policy_chosen_logps)
    rejected_perplexity = torch.exp(policy_rejected_logps)
    losses = -chosen_perplexity + rejected_perplexity
    return losses, policy_chosen_logps.detach(), policy_rejected_logps.detach()


def test_simper_equals_the_reference_code_on_random_logps():
    logps = random_logps(seed=3)
    w, l = logps.chosen / logps.chosen_tokens, logps.rejected / logps.rejected_tokens
    ref_losses, ref_chosen, ref_rejected = simper_as_in_rmipo_trainer(w, l)
    out = SimPERLoss()(logps)
    torch.testing.assert_close(out.losses, ref_losses, **TOL)
    torch.testing.assert_close(out.chosen_rewards, ref_chosen, **TOL)
    torch.testing.assert_close(out.rejected_rewards, ref_rejected, **TOL)


def test_simper_on_a_batch_uses_the_length_averages_trl_computes(models, tmp_path):
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    tok, start, policy = models
    data = rows()
    config = CPOConfig(output_dir=str(tmp_path), loss_type="simpo", cpo_alpha=0.0, **COMMON)
    trainer, theirs = paired_trainer(CPOTrainer, config, tok, policy, data)  # simpo: length-averaged log-probs
    batch = our_batch(tok, data)
    assert_same_inputs(batch, theirs)
    with torch.no_grad():
        w, l = trainer.concatenated_forward(trainer.model, theirs)[:2]
    torch.testing.assert_close(ours(policy, start, SimPERLoss(), batch).losses.mean(),
                               simper_as_in_rmipo_trainer(w, l)[0].mean().float(), **TOL)


# ---- β-DPO -----------------------------------------------------------------------------------------


class AuthorsBetaDPO:
    """junkangwu/beta-DPO trainers.py on one process: BasicTrainer.update_and_sync_tensor_mean (gamma 0.9),
    preference_loss with loss_config.mode_loss == "beta_DPO", and get_batch_metrics' masked mean."""

    def __init__(self, beta, a, mode_weight, gamma=0.9):
        self.beta, self.a, self.mode_weight, self.gamma = beta, a, mode_weight, gamma
        self.gap_mean = torch.zeros(1)
        self.gap_std = torch.zeros(1)

    def __call__(self, policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps):
        gap_local = (policy_chosen_logps - reference_chosen_logps - policy_rejected_logps
                     + reference_rejected_logps).detach()
        with torch.no_grad():
            self.gap_mean.mul_(self.gamma).add_(gap_local.mean(), alpha=1 - self.gamma)
            self.gap_std.mul_(self.gamma).add_(gap_local.std(), alpha=1 - self.gamma)
        pi_logratios = policy_chosen_logps - policy_rejected_logps
        ref_logratios = reference_chosen_logps - reference_rejected_logps
        logits = pi_logratios - ref_logratios
        A = (policy_chosen_logps - reference_chosen_logps - policy_rejected_logps + reference_rejected_logps).detach()
        weight_sample = torch.exp(-0.5 * ((A - self.gap_mean) / self.gap_std).pow(2))
        sample_num = int(weight_sample.numel() * (1 - self.mode_weight))
        sample_index = torch.multinomial(weight_sample, sample_num, replacement=False)
        global_mask = torch.zeros_like(weight_sample)
        global_mask[sample_index] = 1
        A_used = torch.mean(A[sample_index])
        beta_used = (self.beta * (1 + self.a * (A_used - self.gap_mean))).clamp(min=1e-3)
        losses = -F.logsigmoid(beta_used.detach() * logits)
        return (losses * global_mask).sum() / global_mask.sum(), beta_used, self.gap_mean.clone()


@pytest.mark.parametrize("filter_ratio", [0.0, 0.2, 0.5])
def test_betadpo_equals_the_authors_code_batch_after_batch(filter_ratio):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(4)
    theirs = AuthorsBetaDPO(beta=0.1, a=0.6, mode_weight=filter_ratio)
    mine = BetaDPOLoss(beta=0.1, alpha=0.6, filter=filter_ratio > 0, filter_ratio=filter_ratio or 0.2)
    for step in range(8):
        # multiples of 1/8: every sum and difference is exact, so both orders of operations agree bitwise
        pc, pr, rc, rr = (-torch.randint(8, 240, (10,), generator=gen).float() / 8 for _ in range(4))
        state = torch.get_rng_state()
        their_loss, their_beta, their_mean = theirs(pc, pr, rc, rr)
        torch.set_rng_state(state)  # the same draw for the filter
        out = mine(PairLogps(chosen=pc, rejected=pr, chosen_tokens=torch.ones(10), rejected_tokens=torch.ones(10),
                             ref_chosen=rc, ref_rejected=rr))
        torch.testing.assert_close(out.losses.mean(), their_loss, **TOL)
        torch.testing.assert_close(out.metrics["beta/used"], their_beta.squeeze(), **TOL)
        torch.testing.assert_close(mine.margin_mean, their_mean.squeeze(), **TOL)
        torch.testing.assert_close(mine.margin_std, theirs.gap_std.squeeze(), **TOL)


def test_betadpo_with_alpha_zero_equals_trl_dpo(models, tmp_path):
    tok, start, policy = models
    batch = our_batch(tok, rows())
    trl_loss = trl_dpo_loss(tmp_path, tok, start, policy, batch, beta=0.3)
    torch.testing.assert_close(ours(policy, start, BetaDPOLoss(beta=0.3, alpha=0.0), batch).losses.mean(),
                               trl_loss, **TOL)
