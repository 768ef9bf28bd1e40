"""FrozenScorers (prefopt.scoring.frozen): which source serves each frozen log-prob for each loss and
setting, table lookups by pair index (hand-made numbers), where its tensors live (the host's child
`reference` and non-persistent buffers: the module's state_dict keys stay `policy.*`, `reference.*`),
and the one decision of whether prompts are shared."""

import pytest
import torch

from helpers import PAIRS, collated, pair_batch, tiny_model
from prefopt.losses import DPOLoss, IPOLoss, RMiPOLoss, SimPOLoss
from prefopt.scoring.frozen import FrozenScorers
from prefopt.train.module import PreferenceModule

# loss -> (source of "reference", source of "marginal") on a full (not LoRA) policy, before any table
SOURCES = {
    "dpo": (DPOLoss, ("copy", None)),
    "ipo": (IPOLoss, ("copy", None)),
    "simpo": (SimPOLoss, (None, None)),
    "rmipo": (RMiPOLoss, (None, "policy")),
    "rmipo-ref": (lambda: RMiPOLoss(marginal="reference"), (None, "copy")),
}


def scorers(loss, policy=None, share_prompt="auto", reference=None):
    """A FrozenScorers on a bare host module (no LightningModule needed)."""
    host = torch.nn.Module()
    return host, FrozenScorers(host, policy or tiny_model(), loss, share_prompt, reference)


@pytest.mark.parametrize("name", list(SOURCES))
def test_each_loss_gets_its_sources_and_a_copy_only_when_it_needs_one(name):
    make, expected = SOURCES[name]
    host, frozen = scorers(make())
    assert (frozen.source("reference"), frozen.source("marginal")) == expected
    assert (frozen.reference is not None) is ("copy" in expected)
    assert frozen.kinds == [k for k, src in zip(("reference", "marginal"), expected) if src == "copy"]
    if frozen.reference is not None:  # the host's child: moves and converts with it
        assert host.reference is frozen.reference and not frozen.reference.training
        assert not any(p.requires_grad for p in frozen.reference.parameters())


def test_a_given_reference_is_the_copy():
    given = tiny_model(seed=3)
    _, frozen = scorers(DPOLoss(), reference=given)
    assert frozen.reference is given and frozen.source("reference") == "copy"


def test_a_lora_policy_scores_with_its_adapters_disabled_and_holds_no_copy():
    pytest.importorskip("peft")
    from omegaconf import OmegaConf

    from prefopt.models.setup import apply_lora

    policy = apply_lora(tiny_model(), OmegaConf.create({"r": 4, "alpha": 8, "dropout": 0.0}))
    host, frozen = scorers(RMiPOLoss(marginal="reference"), policy)
    assert frozen.adapters and frozen.reference is None and frozen.source("marginal") == "adapters"
    assert not hasattr(host, "reference") or host.reference is None
    policy.train()
    with frozen.scorer() as model:
        assert model is policy and not model.training
    assert policy.training


def test_tables_take_over_split_by_split_then_the_copy_goes():
    host, frozen = scorers(DPOLoss())
    table, tokens = torch.zeros(3, 2), torch.ones(3, 2, dtype=torch.long)
    frozen.use_table("reference", "train", table, tokens)
    assert (frozen.source("reference", "train"), frozen.source("reference", "eval")) == ("table", "copy")
    assert not frozen.release_reference() and frozen.reference is not None  # eval not covered yet
    frozen.use_table("reference", "eval", table, tokens)
    assert frozen.release_reference() and frozen.reference is None and host.reference is None
    assert frozen.source("reference", "eval") == "table"
    assert not frozen.release_reference()  # nothing left to drop
    with pytest.raises(RuntimeError, match="the reference model was released and no cached table covers"):
        with frozen.scorer():
            pass


def test_a_table_is_checked_on_shape_and_names():
    _, frozen = scorers(DPOLoss())
    with pytest.raises(ValueError, match="unknown log-prob table kind='policy' split='train'"):
        frozen.use_table("policy", "train", torch.zeros(2, 2), torch.zeros(2, 2))
    with pytest.raises(ValueError, match=r"\(N, 2\) logps and tokens, got \(2, 3\), \(2, 3\)"):
        frozen.use_table("reference", "train", torch.zeros(2, 3), torch.zeros(2, 3))


def test_fields_come_from_the_table_rows_of_each_pair_index():
    """Pairs 2 and 0 of a hand-made table: ref_chosen = column 0 of those rows, ref_rejected column 1;
    the marginal also returns the table's token counts."""
    table = torch.tensor([[-1.0, -2.0], [-3.0, -4.0], [-5.0, -6.0]])
    counts = torch.tensor([[3, 2], [5, 3], [1, 4]])
    batch = {"index": torch.tensor([2, 0])}
    policy_tokens = torch.tensor([1, 3, 4, 2])  # chosen of pairs 2, 0, then rejected of pairs 2, 0

    _, dpo = scorers(DPOLoss())
    dpo.use_table("reference", "train", table, counts)
    got = dpo.logps(batch, "train", policy_tokens, share=False)
    assert set(got) == {"ref_chosen", "ref_rejected"}
    assert got["ref_chosen"].tolist() == [-5.0, -1.0] and got["ref_rejected"].tolist() == [-6.0, -2.0]

    _, rmipo = scorers(RMiPOLoss(marginal="reference"))
    rmipo.use_table("marginal", "eval", table, counts)
    got = rmipo.logps(batch, "eval", policy_tokens, share=False)
    assert got["marginal_chosen"].tolist() == [-5.0, -1.0] and got["marginal_rejected"].tolist() == [-6.0, -2.0]
    assert got["marginal_chosen_tokens"].tolist() == [1, 3] and got["marginal_rejected_tokens"].tolist() == [4, 2]

    _, simpo = scorers(SimPOLoss())
    assert simpo.logps(batch, "train", policy_tokens, share=False) == {}


def test_the_live_marginal_is_the_policy_in_eval_mode_without_gradients():
    policy = tiny_model()
    _, frozen = scorers(RMiPOLoss(), policy)
    policy.train()
    batch = pair_batch(PAIRS)
    got = frozen.logps(batch, "train", torch.zeros(6, dtype=torch.long), share=False)
    assert not got["marginal_chosen"].requires_grad and policy.training
    assert got["marginal_chosen_tokens"].tolist() == [3, 5, 1]  # the responses' lengths (eos included)


def test_module_state_dict_keys_are_the_policys_and_the_references():
    module = PreferenceModule(tiny_model(), DPOLoss())
    module.frozen.use_table("reference", "train", torch.zeros(3, 2), torch.ones(3, 2, dtype=torch.long))
    policy_keys = set(tiny_model().state_dict())
    assert set(module.state_dict()) == {f"policy.{k}" for k in policy_keys} | {f"reference.{k}" for k in policy_keys}
    assert module._table_reference_train_logps.shape == (3, 2)  # a buffer of the module, left out of checkpoints
    assert set(PreferenceModule(tiny_model(), SimPOLoss()).state_dict()) == {f"policy.{k}" for k in policy_keys}


# ---- whether prompts are shared: one decision ------------------------------------------------------

LONG = [([1] + [5 + i % 7 for i in range(20)], [8, 9, 2], [10, 2]), ([1] + [4] * 17, [12, 2], [13, 14, 2])]


@pytest.mark.parametrize("setting", [True, False, "auto"])
def test_the_setting_decides_unless_checkpointing_or_sharding_forbids(setting):
    from lightning.pytorch.strategies import FSDPStrategy

    assert scorers(DPOLoss(), share_prompt=setting)[1].shares_prompt() == setting
    checkpointed = tiny_model()
    checkpointed.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    _, frozen = scorers(DPOLoss(), checkpointed, share_prompt=setting)
    assert frozen.shares_prompt() is False
    assert frozen.table_sharing == setting  # the builds run before fit, without gradients: the setting itself
    host, frozen = scorers(DPOLoss(), share_prompt=setting)
    host._trainer = type("T", (), {"strategy": FSDPStrategy()})()
    assert frozen.shares_prompt() is False


def test_auto_settles_on_the_first_batch_with_long_prompts_and_keeps_it():
    _, frozen = scorers(SimPOLoss())
    short = collated(PAIRS)  # prompts of at most 7 tokens: not shared, nothing settled
    assert frozen.sharing(short) == "auto" and frozen.shares_prompt() == "auto"
    assert frozen.sharing(collated(LONG)) is True  # checked once on this batch, then kept
    assert frozen.sharing(short) is True and frozen.shares_prompt() is True
