"""Loading preference data (prefopt.data.formats): jsonl, json, parquet, `datasets` folders, hub ids."""

import json

import pytest

from prefopt.data.errors import DataError
from prefopt.data.formats import load_preference_rows, load_rows

STRING_ROWS = [
    {"prompt": "2+2=", "chosen": " 4", "rejected": " 5"},
    {"prompt": "Capital of France?", "chosen": " Paris", "rejected": " Rome"},
    {"prompt": "Say hi", "chosen": " hi", "rejected": " hi"},  # identical: dropped
]


def user(text):
    return {"role": "user", "content": text}


def bot(text):
    return {"role": "assistant", "content": text}


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_strings(tmp_path):
    f = write_jsonl(tmp_path / "pairs.jsonl", STRING_ROWS)
    assert load_rows(f) == STRING_ROWS
    assert load_rows(f, max_rows=2) == STRING_ROWS[:2]
    rows, drops = load_preference_rows(f)
    assert rows == STRING_ROWS[:2]
    assert drops == {"identical_responses": 1, "empty_response": 0}


def test_jsonl_chat_and_implicit_prompt(tmp_path):
    raw = [
        {"prompt": [user("hi")], "chosen": [bot("hello")], "rejected": [bot("go away")]},
        {"chosen": [user("Q"), bot("A")], "rejected": [user("Q"), bot("B")]},
    ]
    rows, _ = load_preference_rows(write_jsonl(tmp_path / "chat.jsonl", raw))
    assert rows == [
        {"prompt": [user("hi")], "chosen": [bot("hello")], "rejected": [bot("go away")]},
        {"prompt": [user("Q")], "chosen": [bot("A")], "rejected": [bot("B")]},
    ]


def test_json_list_and_split_dict(tmp_path):
    (tmp_path / "list.json").write_text(json.dumps(STRING_ROWS))
    assert load_rows(tmp_path / "list.json") == STRING_ROWS
    (tmp_path / "splits.json").write_text(json.dumps({"train": STRING_ROWS[:2], "test": STRING_ROWS[2:]}))
    assert load_rows(tmp_path / "splits.json") == STRING_ROWS[:2]
    assert load_rows(tmp_path / "splits.json", split="test") == STRING_ROWS[2:]
    with pytest.raises(DataError, match=r"splits\.json: no split 'dev' \(available: \['test', 'train'\]\)"):
        load_rows(tmp_path / "splits.json", split="dev")
    with pytest.raises(DataError, match=r"list\.json: this file has no splits, but split 'test' was requested"):
        load_rows(tmp_path / "list.json", split="test")


def test_parquet_with_message_columns(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    raw = [{"chosen": [user("Q"), bot("A")], "rejected": [user("Q"), bot("B")]}]
    pq.write_table(pa.Table.from_pylist(raw * 3), tmp_path / "p.parquet")
    rows, _ = load_preference_rows(tmp_path / "p.parquet", max_rows=2)
    assert rows == [{"prompt": [user("Q")], "chosen": [bot("A")], "rejected": [bot("B")]}] * 2


def ultrafeedback_like(n, offset=0):
    return [
        {
            "prompt": f"Question {i}?",
            "prompt_id": f"id{i}",
            "chosen": [user(f"Question {i}?"), bot(f"Good answer {i}.")],
            "rejected": [user(f"Question {i}?"), bot(f"Bad answer {i}.")],
            "score_chosen": 8.0,
            "score_rejected": 2.5,
        }
        for i in range(offset, offset + n)
    ]


def test_ultrafeedback_layout_saved_with_datasets(tmp_path):
    import datasets

    dd = datasets.DatasetDict(
        {
            "train_prefs": datasets.Dataset.from_list(ultrafeedback_like(4)),
            "test_prefs": datasets.Dataset.from_list(ultrafeedback_like(2, offset=100)),
        }
    )
    dd.save_to_disk(str(tmp_path / "uf"))
    train, _ = load_preference_rows(tmp_path / "uf", split="train_prefs")
    test, _ = load_preference_rows(tmp_path / "uf", split="test_prefs", max_rows=1)
    assert len(train) == 4 and len(test) == 1
    assert train[1] == {"prompt": [user("Question 1?")], "chosen": [bot("Good answer 1.")],
                        "rejected": [bot("Bad answer 1.")]}
    assert test[0]["prompt"] == [user("Question 100?")]
    with pytest.raises(DataError, match=r"uf: no split 'train' \(available: \['test_prefs', 'train_prefs'\]\)"):
        load_rows(tmp_path / "uf")
    datasets.Dataset.from_list(STRING_ROWS).save_to_disk(str(tmp_path / "single"))
    assert load_rows(tmp_path / "single") == STRING_ROWS


def test_broken_json_line_names_file_and_line(tmp_path):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps(STRING_ROWS[0]) + "\n\n" + '{"prompt": "x", "chosen": \n')
    with pytest.raises(DataError, match=r"bad\.jsonl, line 3: broken JSON line"):
        load_rows(f)
    f.write_text("[1, 2]\n")
    with pytest.raises(DataError, match=r"bad\.jsonl, line 1: expected a JSON object, got list"):
        load_rows(f)


def test_bad_row_error_names_file_and_row(tmp_path):
    f = write_jsonl(tmp_path / "pairs.jsonl", [STRING_ROWS[0], {"prompt": "x", "chosen": None, "rejected": "y"}])
    with pytest.raises(DataError) as err:
        load_preference_rows(f)
    assert str(err.value) == f"{f}, line 2: field 'chosen' is null"  # the second line, as broken JSON says


def test_no_rows_missing_file_and_unknown_type(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(DataError, match=r"empty\.jsonl: no rows"):
        load_rows(tmp_path / "empty.jsonl")
    with pytest.raises(DataError, match=r"nope\.jsonl: no such file or folder"):
        load_rows(tmp_path / "nope.jsonl")
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match=r"x\.csv: unsupported file type '\.csv'"):
        load_rows(tmp_path / "x.csv")
    f = write_jsonl(tmp_path / "same.jsonl", [STRING_ROWS[2]])
    with pytest.raises(DataError, match=r"same\.jsonl: no usable rows"):
        load_preference_rows(f)


def test_offline_hub_id_says_how_to_use_a_local_copy(monkeypatch):
    import datasets
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DataError) as err:
        load_rows("no-such-org/no-such-dataset", split="train_prefs")
    msg = str(err.value)
    assert msg.startswith("no-such-org/no-such-dataset: not a local file or folder, and the Hugging Face Hub")
    assert "offline (HF_HUB_OFFLINE=1)" in msg
    assert "set data.path=DIR" in msg and "save_to_disk" in msg


def test_folder_of_data_files_like_a_hub_snapshot(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "snap" / "data").mkdir(parents=True)
    for split, n in (("train_prefs", 3), ("test_prefs", 2)):
        table = pa.Table.from_pylist(ultrafeedback_like(n))
        pq.write_table(table, tmp_path / "snap" / "data" / f"{split}-00000-of-00001.parquet")
    assert len(load_rows(tmp_path / "snap", split="train_prefs")) == 3
    assert len(load_rows(tmp_path / "snap", split="test_prefs")) == 2
    with pytest.raises(DataError, match=r"snap: could not read this folder with datasets .*Unknown split"):
        load_rows(tmp_path / "snap", split="dev")
