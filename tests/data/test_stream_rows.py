"""Reading preference data as a stream (prefopt.data.formats.iter_rows / load_rows / load_preference_rows):
only the rows kept are read and held, each row is named where it is (1-based "line N" in .jsonl, "row N"
elsewhere), and JSON too deep or integers too long are one-line DataErrors, not tracebacks."""

import json
import subprocess
import sys
import textwrap
import tracemalloc

import pytest

from prefopt.data import formats
from prefopt.data.errors import DataError
from prefopt.data.formats import iter_rows, load_preference_rows, load_rows

ROWS = [{"prompt": f"q{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(10)]


def write_parquet(path, rows, row_group_size, compression="snappy"):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=row_group_size, compression=compression)
    return path


# ---- reading only what is kept ---------------------------------------------------------------------------
def test_jsonl_lines_after_max_rows_are_never_read(tmp_path):
    f = tmp_path / "pairs.jsonl"
    good = "".join(json.dumps(r) + "\n" for r in ROWS[:2])
    f.write_bytes(good.encode() + b"\n" + b'{"prompt": "broken\n' + b'{"prompt": "caf\xe9"}\n')
    assert load_rows(f, max_rows=2) == ROWS[:2]
    rows, drops = load_preference_rows(f, max_rows=2)
    assert rows == ROWS[:2] and drops == {"identical_responses": 0, "empty_response": 0}
    with pytest.raises(DataError, match=rf"^{f}, line 4: broken JSON line"):  # line 3 is blank
        load_rows(f, max_rows=3)


def test_jsonl_read_holds_the_kept_rows_not_the_file(tmp_path):
    f = tmp_path / "big.jsonl"
    row = {"prompt": "p" * 1000, "chosen": "c" * 2000, "rejected": "r" * 2000}  # ~5 KB a line
    f.write_text((json.dumps(row) + "\n") * 2000)  # ~10 MB
    tracemalloc.start()
    try:
        rows, _ = load_preference_rows(f, max_rows=5)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(rows) == 5
    assert peak < 500_000  # 5 rows of 5 KB, a line and the file buffer; the file is 10 MB


def test_iter_rows_is_lazy_and_closes_its_file(tmp_path):
    f = tmp_path / "pairs.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    located = iter_rows(f)
    assert next(located) == ("line 1", ROWS[0])
    located.close()  # releases the file handle at once (load_rows does this when max_rows stops it)
    assert list(iter_rows(f, max_rows=3)) == [(f"line {i}", ROWS[i - 1]) for i in (1, 2, 3)]


def test_parquet_is_read_in_record_batches_across_row_groups(tmp_path, monkeypatch):
    monkeypatch.setattr(formats, "PARQUET_BATCH_ROWS", 3)  # batches of 3 over row groups of 4
    f = write_parquet(tmp_path / "p.parquet", ROWS, row_group_size=4)
    assert list(iter_rows(f)) == [(f"row {i}", ROWS[i - 1]) for i in range(1, 11)]
    assert load_rows(f, max_rows=7) == ROWS[:7]


def test_parquet_row_groups_after_max_rows_are_never_read(tmp_path, monkeypatch):
    import pyarrow.parquet as pq

    monkeypatch.setattr(formats, "PARQUET_BATCH_ROWS", 2)
    f = write_parquet(tmp_path / "p.parquet", ROWS[:8], row_group_size=4, compression="none")
    column = pq.ParquetFile(f).metadata.row_group(1).column(0)  # the second row group's first column
    with open(f, "r+b") as fh:
        fh.seek(column.dictionary_page_offset or column.data_page_offset)
        fh.write(b"\xff" * 16)  # its page header is garbage now
    assert load_rows(f, max_rows=4) == ROWS[:4]
    with pytest.raises(DataError, match=rf"^{f}: not a readable parquet file \("):
        load_rows(f)


@pytest.mark.slow
def test_parquet_read_of_a_few_rows_allocates_far_less_than_the_file(tmp_path):
    """In a fresh process: pyarrow's peak allocation reading 100 rows of a 30 MB single-row-group file
    of 1 KB rows. pyarrow writes pages of ~1024 values (~0.4 MB here), a batch is 512 rows (~0.5 MB):
    a few MB in all. Reading the row group whole (pq.read_table, as before) peaked at 65 MB."""
    f = write_parquet(tmp_path / "big.parquet", [{"prompt": f"p{i} " + "x" * 200, "chosen": "c" * 400 + str(i),
                                                  "rejected": "r" * 400 + str(i)} for i in range(30_000)],
                      row_group_size=10**6, compression="none")
    code = textwrap.dedent(f"""
        import pyarrow as pa
        from prefopt.data.formats import load_rows
        assert len(load_rows({str(f)!r}, max_rows=100)) == 100
        print(pa.default_memory_pool().max_memory())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert f.stat().st_size > 30_000_000
    assert int(out) < 12_000_000  # measured 8.5 MB; pre-buffering the row group: 35 MB


# ---- one numbering: 1-based lines of a .jsonl file, 1-based rows elsewhere ------------------------------
def test_jsonl_row_errors_name_the_line(tmp_path):
    f = tmp_path / "pairs.jsonl"
    null = {"prompt": "x", "chosen": None, "rejected": "y"}
    f.write_text(json.dumps(ROWS[0]) + "\n\n" + json.dumps(null) + "\n")
    with pytest.raises(DataError) as err:
        load_preference_rows(f)
    assert str(err.value) == f"{f}, line 3: field 'chosen' is null"
    chat = {"prompt": [{"role": "user", "content": "Q"}], "chosen": [{"role": "assistant", "content": "a"}],
            "rejected": [{"role": "assistant", "content": "b"}]}
    f.write_text("\n" + json.dumps(ROWS[0]) + "\n" + json.dumps(chat) + "\n")
    with pytest.raises(DataError, match=rf"^{f}, line 3: chat messages, but line 2 is plain strings"):
        load_preference_rows(f)
    f.write_text(json.dumps(ROWS[0]) + "\n" + json.dumps({"prompt": "q", "chosen": "s", "rejected": "s"}) + "\n")
    with pytest.raises(DataError, match=rf"^{f}, line 2: identical responses \(data.strict=true"):
        load_preference_rows(f, strict=True)


def test_json_parquet_and_datasets_rows_are_numbered_from_one(tmp_path):
    import datasets

    bad = [ROWS[0], {"prompt": "x", "chosen": None, "rejected": "y"}]
    (tmp_path / "list.json").write_text(json.dumps(bad))
    write_parquet(tmp_path / "p.parquet", bad, row_group_size=1)
    datasets.Dataset.from_list(bad).save_to_disk(str(tmp_path / "ds"))
    for name in ("list.json", "p.parquet", "ds"):
        with pytest.raises(DataError) as err:
            load_preference_rows(tmp_path / name)
        assert str(err.value) == f"{tmp_path / name}, row 2: field 'chosen' is null"


# ---- JSON the parser refuses: one line naming the file and line -----------------------------------------
def deep_row(depth):
    return '{"prompt": ' + "[" * depth + "]" * depth + ', "chosen": "a", "rejected": "b"}'


def test_deeply_nested_jsonl_line_is_a_one_line_error(tmp_path):
    f = tmp_path / "deep.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in ROWS[:6]) + deep_row(200_000) + "\n")
    with pytest.raises(DataError) as err:
        load_rows(f)
    msg = str(err.value)
    assert msg.startswith(f"{f}, line 7: nesting deeper than the JSON reader allows (200001 levels; about ")
    assert "\n" not in msg and err.value.__cause__ is None and err.value.__suppress_context__
    assert len(load_rows(f, max_rows=6)) == 6


def test_huge_integer_in_jsonl_is_a_one_line_error(tmp_path):
    f = tmp_path / "int.jsonl"
    f.write_text(json.dumps(ROWS[0]) + "\n" + '{"prompt": "q", "chosen": "a", "rejected": "b", "id": '
                 + "7" * 5000 + "}\n")
    limit = sys.get_int_max_str_digits()
    with pytest.raises(DataError) as err:
        load_rows(f)
    assert str(err.value) == (f"{f}, line 2: an integer of 5000 digits (at most {limit} can be read); "
                              "write it as a string")


def test_json_file_too_deep_or_with_a_huge_integer(tmp_path):
    f = tmp_path / "rows.json"
    f.write_text("[\n" + json.dumps(ROWS[0]) + ",\n" + deep_row(100_000) + "\n]")
    with pytest.raises(DataError, match=rf"^{f}: nesting deeper than the JSON reader allows \(100002 levels"):
        load_rows(f)
    f.write_text("[\n" + json.dumps(ROWS[0]) + ',\n{"id": -' + "1" * 4400 + "}\n]")
    with pytest.raises(DataError, match=rf"^{f}, line 3: an integer of 4400 digits \(at most"):
        load_rows(f)
