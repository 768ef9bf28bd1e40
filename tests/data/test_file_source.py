"""PreferenceFileSource (data=jsonl|ultrafeedback): rows, seeded held-out split, eval_split, corpus, info."""

import json

import pytest

from prefopt.data.errors import DataError
from prefopt.data.source import PreferenceFileSource, split_off
from prefopt.tasks.base import Task


def write(tmp_path, n, extra=()):
    rows = [{"prompt": f"p{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(n)] + list(extra)
    f = tmp_path / "pairs.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return f


def test_holds_out_a_seeded_fraction(tmp_path):
    f = write(tmp_path, 40, extra=[{"prompt": "x", "chosen": "same", "rejected": "same"}])
    src = PreferenceFileSource(path=str(f), eval_fraction=0.1, seed=3)
    assert isinstance(src, Task)
    art = src.build(None, None, tmp_path / "cache")
    again = PreferenceFileSource(path=str(f), eval_fraction=0.1, seed=3).build(None, None, tmp_path)
    other = PreferenceFileSource(path=str(f), eval_fraction=0.1, seed=4).build(None, None, tmp_path)
    assert len(art.train_rows) == 36 and len(art.eval_rows) == 4
    assert art.eval_rows == again.eval_rows and art.eval_rows != other.eval_rows
    prompts = sorted(r["prompt"] for r in art.train_rows + art.eval_rows)
    assert prompts == sorted(f"p{i}" for i in range(40))
    assert art.info == {"rows": {"train": 36, "eval": 4}, "drops": {"train": {"identical_responses": 1,
                        "empty_response": 0}}, "path": str(f), "split": "train", "eval_split": None,
                        "pin": {"max_rows": 41}}  # rows read, the dropped one too: a resume reads as many
    assert art.oracle is None and art.policy is None


def test_small_files_and_fractions():
    assert split_off(1, 0.05, 0) == ([0], [])
    train, held = split_off(2, 0.05, 0)
    assert len(held) == 1 and sorted(train + held) == [0, 1]
    assert split_off(10, 0.0, 0) == (list(range(10)), [])
    assert len(split_off(10, 0.99, 0)[0]) == 1  # never all rows
    with pytest.raises(DataError, match="eval_fraction"):
        split_off(10, 1.0, 0)


def test_eval_split_and_corpus(tmp_path):
    import datasets

    def conv(i, kind):
        return [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"{kind}{i}"}]

    def split(lo, hi):
        return datasets.Dataset.from_list(
            [{"prompt": f"q{i}", "chosen": conv(i, "good"), "rejected": conv(i, "bad")} for i in range(lo, hi)]
        )

    datasets.DatasetDict({"train_prefs": split(0, 5), "test_prefs": split(10, 13)}).save_to_disk(str(tmp_path / "uf"))
    src = PreferenceFileSource(path=str(tmp_path / "uf"), split="train_prefs", eval_split="test_prefs", max_rows=4,
                               max_eval_rows=2)
    art = src.build(None, None, tmp_path)
    assert len(art.train_rows) == 4 and len(art.eval_rows) == 2
    assert art.eval_rows[0]["prompt"] == [{"role": "user", "content": "q10"}]
    texts = list(art.corpus())
    assert texts[:3] == ["q0", "good0", "bad0"] and texts[-3:] == ["q11", "good11", "bad11"]
    assert art.info["drops"] == {"train": {"identical_responses": 0, "empty_response": 0},
                                 "eval": {"identical_responses": 0, "empty_response": 0}}
    assert art.info["pin"] == {"max_rows": 4, "max_eval_rows": 2}


def test_pin_reads_the_same_rows_and_split_after_rows_are_appended(tmp_path):
    f = write(tmp_path, 40)
    art = PreferenceFileSource(path=str(f), eval_fraction=0.1, seed=3).build(None, None, tmp_path)
    with f.open("a") as fh:
        fh.write("".join(json.dumps({"prompt": f"new{i}", "chosen": "a", "rejected": "b"}) + "\n" for i in range(9)))
    grown = PreferenceFileSource(path=str(f), eval_fraction=0.1, seed=3).build(None, None, tmp_path)
    assert len(grown.train_rows) + len(grown.eval_rows) == 49 and grown.eval_rows != art.eval_rows
    pinned = PreferenceFileSource(path=str(f), eval_fraction=0.1, seed=3, **art.info["pin"]).build(None, None, tmp_path)
    assert (pinned.train_rows, pinned.eval_rows) == (art.train_rows, art.eval_rows)
    assert pinned.info["pin"] == {"max_rows": 40}
    assert list(pinned.corpus()) == list(art.corpus())  # the text a tiny model's tokenizer is trained on


def test_missing_path_is_explained():
    with pytest.raises(DataError, match="data.path is not set"):
        PreferenceFileSource(path="")
