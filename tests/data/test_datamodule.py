"""PreferenceDataModule: tokenization in setup, drop stats, seeded shuffling, ordered eval, indices."""

import pytest
import torch

from prefopt.data.datamodule import PreferenceDataModule
from prefopt.data.errors import DataError
from prefopt.data.tokenizer_builder import build_bpe_tokenizer

torch.set_num_threads(1)

WORDS = "one two three four five six seven eight nine ten"


@pytest.fixture(scope="module")
def tok():
    return build_bpe_tokenizer([WORDS] * 20, vocab_size=400)


def rows(n):
    return [{"prompt": "one two", "chosen": " three" * (1 + i % 3), "rejected": " four"} for i in range(n)]


def make(tok, seed, train=None, eval_rows=None, **kw):
    args = dict(max_length=16, max_prompt_length=8, batch_size=4, eval_batch_size=3, seed=seed)
    args.update(kw)
    dm = PreferenceDataModule(train if train is not None else rows(20), eval_rows or rows(5), tok, **args)
    dm.setup("fit")
    return dm


def epoch_order(loader):
    return torch.cat([b["index"] for b in loader]).tolist()


def test_same_seed_same_order_other_seed_other_order(tok):
    a, b, c = make(tok, 7), make(tok, 7), make(tok, 8)
    la, lb = a.train_dataloader(), b.train_dataloader()
    first = epoch_order(la)
    la.epoch_sampler.set_epoch(1)  # Lightning calls set_epoch at each epoch start
    second = epoch_order(la)
    assert sorted(first) == list(range(20)) and first != list(range(20))
    assert first == epoch_order(lb)
    lb.epoch_sampler.set_epoch(1)
    assert second == epoch_order(lb)  # epoch after epoch
    assert first != second
    assert epoch_order(c.train_dataloader()) != first


def test_eval_loader_keeps_order_and_batches(tok):
    dm = make(tok, 0)
    batches = list(dm.val_dataloader())
    assert [b["index"].tolist() for b in batches] == [[0, 1, 2], [3, 4]]
    assert batches[0]["input_ids"].shape[0] == 6  # chosen rows then rejected rows


def test_items_and_batches_carry_token_ids(tok):
    dm = make(tok, 0)
    item = dm.train_dataset[1]
    assert tok.convert_ids_to_tokens(item["prompt_ids"]) == ["<s>", "one", "Ġtwo"]
    assert tok.convert_ids_to_tokens(item["chosen_ids"]) == ["Ġthree", "Ġthree", "</s>"]
    assert item["index"] == 1 and item["row"] == 1
    batch = next(iter(dm.loader("train")))
    assert batch["input_ids"][1, :6].tolist() == item["prompt_ids"] + item["chosen_ids"]
    assert batch["marginal_input_ids"][1, :4].tolist() == [tok.bos_token_id] + item["chosen_ids"]


def test_drops_and_truncations_are_counted(tok):
    train = rows(4) + [{"prompt": WORDS, "chosen": " one", "rejected": " two"}]  # 11 prompt tokens
    dm = make(tok, 0, train=train, eval_rows=rows(2), max_length=6, max_prompt_length=6)
    # rows 0..3: prompt 3 tokens, 3 left for responses: " three"*3 + EOS (4) is cut once (row 2)
    # row 4: prompt cut to 6 tokens (BOS + last 5 words), no room for a response: dropped
    assert dm.stats["train/rows"] == 5 and dm.stats["train/pairs"] == 4
    assert dm.stats["train/dropped_truncated"] == 1
    assert dm.stats["train/truncated_prompts"] == 0 and dm.stats["train/truncated_responses"] == 1
    assert dm.stats["eval/pairs"] == 2 and dm.stats["eval/dropped_truncated"] == 0
    assert [it["index"] for it in dm.train_dataset.items] == [0, 1, 2, 3]


def test_errors(tok):
    with pytest.raises(DataError, match="all 1 train rows were dropped"):
        make(tok, 0, train=[{"prompt": WORDS, "chosen": " one", "rejected": " two"}], max_length=6, max_prompt_length=6)
    with pytest.raises(DataError, match="max_prompt_length >= 1"):
        make(tok, 0, max_length=8, max_prompt_length=0)
    chat = [{"prompt": [{"role": "user", "content": "one"}], "chosen": [{"role": "assistant", "content": "two"}],
             "rejected": [{"role": "user", "content": "three"}]}]
    bad = build_bpe_tokenizer([WORDS], vocab_size=300)
    bad.chat_template = "{{ raise_exception('roles must alternate') }}"
    with pytest.raises(DataError, match="train row 1: could not tokenize .*roles must alternate"):
        make(bad, 0, train=chat)


def test_a_validation_split_under_8_pairs_is_a_warning_naming_the_key(tok, capsys):
    make(tok, 0, eval_rows=rows(8))
    assert "validation pair" not in capsys.readouterr().err
    make(tok, 0, eval_rows=rows(3))
    (line,) = [x for x in capsys.readouterr().err.splitlines() if "validation pair" in x]
    assert line.startswith("[prefopt] warning: only 3 validation pairs (fewer than 8): val/* metrics will be mostly "
                           "noise; raise data.source.eval_fraction")
    dm = PreferenceDataModule(rows(20), [], tok, max_length=16, max_prompt_length=8, batch_size=4, eval_batch_size=3,
                              seed=0)
    dm.setup()
    assert "warning: no validation pairs: no val/* metrics; raise data.source.eval_fraction" in capsys.readouterr().err
