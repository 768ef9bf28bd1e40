"""Reading preference data from wherever the user keeps it: `data.path` may name

- a `.jsonl` file (one JSON object per line), a `.json` file (a list of rows, or {split: rows}),
- a `.parquet` file,
- a folder written by `datasets` (`save_to_disk`, a Dataset or a DatasetDict whose `split` is picked),
- any other local folder `datasets.load_dataset` understands (e.g. a downloaded hub snapshot),
- a Hugging Face Hub id (e.g. HuggingFaceH4/ultrafeedback_binarized), loaded with `datasets`.

`iter_rows` yields raw rows one at a time with where each is ("line 7" in a .jsonl file, "row 3" in the
others; both 1-based). .jsonl and .parquet files are read as streams (lines; record batches), so
reading the first `max_rows` rows holds those rows, not the file; a .json file is parsed whole.
`load_rows` returns raw rows; `load_preference_rows` also normalizes them (see rows.py) as they stream.
Exercised by `pytest tests/data/test_formats.py tests/data/test_stream_rows.py`,
`python benchmarks/stream_memory.py` and `python src/run.py data=jsonl data.path=FILE`.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys
from itertools import islice
from pathlib import Path
from typing import Any, Iterator, Optional

from prefopt.data.errors import DataError
from prefopt.data.rows import normalize_located, normalize_row, normalize_rows
from prefopt.errors import first_line as message_line  # `first_line` names a line number below

__all__ = ["iter_rows", "load_rows", "load_preference_rows", "normalize_row", "normalize_rows", "describe"]

HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
FILE_SUFFIXES = (".jsonl", ".json", ".parquet")
DEFAULT_SPLIT = "train"
PARQUET_BATCH_ROWS = 512  # rows converted to Python at a time
PARQUET_READ_BYTES = 1 << 20  # column data read at a time (not a whole row group)

Located = tuple[str, Any]  # (where in the source: "line 7" / "row 3", the raw row)


def describe(path: str | os.PathLike, split: Optional[str]) -> str:
    """How errors name a source: the path, plus the split when one was picked."""
    return f"{path} [split {split}]" if split else str(path)


def _numbered(rows: Any) -> Iterator[Located]:
    return ((f"row {i}", row) for i, row in enumerate(rows, start=1))


def _no_splits(path: Path, split: Optional[str]) -> None:
    """A file without splits serves only the default split: asking for another one is an error."""
    if split not in (None, DEFAULT_SPLIT):
        raise DataError(f"{path}: this file has no splits, but split '{split}' was requested")


def _pick_split(splits: dict[str, Any], split: Optional[str], path: Path) -> Any:
    if split is None:
        if len(splits) == 1:
            return next(iter(splits.values()))
        split = DEFAULT_SPLIT
    if split not in splits:
        raise DataError(f"{path}: no split '{split}' (available: {sorted(splits)}); set the split to one of them")
    return splits[split]


def _not_utf8(path: Path, raw: bytes, err: UnicodeDecodeError, first_line: int = 1) -> DataError:
    """A DataError naming the file, line and column of the byte of `raw` that is not UTF-8
    (`first_line`: the number of the line `raw` starts with)."""
    line_start = raw.rfind(b"\n", 0, err.start) + 1
    line_no = first_line + raw.count(b"\n", 0, err.start)
    return DataError(f"{path}, line {line_no}: not UTF-8 text (byte 0x{raw[err.start]:02x} at column "
                     f"{err.start - line_start + 1}); re-save the file as UTF-8")


def _decode_line(raw: bytes, path: Path, line_no: int) -> str:
    """One line of a text file as UTF-8, or a DataError naming the file and line."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _not_utf8(path, raw, e, line_no) from None


def _depth(text: str) -> int:
    """How deeply the arrays/objects of a JSON text nest (brackets inside strings do not count)."""
    brackets = re.sub(r'[^\[\]{}]', "", re.sub(r'"(?:[^"\\]|\\.)*"', "", text))
    depth = deepest = 0
    for c in brackets:
        depth += 1 if c in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def _huge_int(err: ValueError, text: str, where: str, line: bool) -> DataError:
    """Python refuses integers of more than `sys.get_int_max_str_digits()` digits: say so, and on
    which line of a whole file (`line`: `where` already names the line)."""
    digits = re.search(r"value has (\d+) digits", str(err))
    if digits is None:  # not the integer limit: some other value json cannot read
        return DataError(f"{where}: unreadable JSON value ({str(err).splitlines()[0]})")
    if not line:
        at = re.search(r"\d{%s}" % digits.group(1), text)
        where += f", line {text.count(chr(10), 0, at.start()) + 1}" if at else ""
    return DataError(f"{where}: an integer of {digits.group(1)} digits (at most "
                     f"{sys.get_int_max_str_digits()} can be read); write it as a string")


def _parse_json(text: str, where: str, line: bool) -> Any:
    """`json.loads(text)`, or a one-line DataError starting with `where` (the file, and the line when
    `line`) for broken JSON, nesting too deep for the parser, or an integer too long to convert."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        if line:
            raise DataError(f"{where}: broken JSON line ({e.msg} at column {e.colno})") from None
        hint = " (one object per line is JSON Lines: name the file .jsonl)" if e.msg == "Extra data" else ""
        raise DataError(f"{where}: broken JSON ({e.msg} at line {e.lineno}, column {e.colno}){hint}") from None
    except RecursionError:
        raise DataError(f"{where}: nesting deeper than the JSON reader allows ({_depth(text)} levels; about "
                        f"{sys.getrecursionlimit()} at most); a row is an object of text fields") from None
    except ValueError as e:
        raise _huge_int(e, text, where, line) from None


def _read_parquet(path: Path) -> Iterator[Located]:
    """Rows of a parquet file, a record batch at a time, or a DataError naming the file when it is not
    readable parquet. Without pre-buffering, pyarrow reads a row group's columns in small blocks."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        reader = pq.ParquetFile(path, pre_buffer=False, buffer_size=PARQUET_READ_BYTES)
        batches = reader.iter_batches(batch_size=PARQUET_BATCH_ROWS)
        n = 0
        for batch in batches:
            for row in batch.to_pylist():
                n += 1
                yield f"row {n}", row
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"{path}: not a readable parquet file ({message_line(e)})") from None


def _read_jsonl(path: Path) -> Iterator[Located]:
    """Rows of a JSON Lines file, a line at a time (blank lines skipped; numbers count every line)."""
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            line = _decode_line(raw, path, line_no)
            if not line.strip():
                continue
            where = f"line {line_no}"
            row = _parse_json(line, f"{path}, {where}", line=True)
            if not isinstance(row, dict):
                raise DataError(f"{path}, {where}: expected a JSON object, got {type(row).__name__}")
            yield where, row


def _read_json(path: Path, split: Optional[str]) -> Iterator[Located]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _not_utf8(path, raw, e) from None
    data = _parse_json(text, str(path), line=False)
    if isinstance(data, dict):
        if not data or not all(isinstance(v, list) for v in data.values()):
            raise DataError(f"{path}: a JSON object must map split names to lists of rows")
        data = _pick_split(data, split, path)
    elif isinstance(data, list):
        _no_splits(path, split)
    else:
        raise DataError(f"{path}: expected a list of rows or {{split: rows}}, got {type(data).__name__}")
    return _numbered(data)


def _from_dataset(ds: Any, split: Optional[str], path: Path, max_rows: Optional[int]) -> Iterator[Located]:
    """Rows of a `datasets` Dataset, or of the chosen split of a DatasetDict (memory-mapped: read as
    they are asked for)."""
    if hasattr(ds, "keys"):  # DatasetDict
        ds = _pick_split(dict(ds), split, path)
    else:
        _no_splits(path, split)
    if max_rows is not None and max_rows < len(ds):
        ds = ds.select(range(max_rows))
    return _numbered(ds)


def _read_folder(path: Path, split: Optional[str], max_rows: Optional[int]) -> Iterator[Located]:
    import datasets

    if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
        return _from_dataset(datasets.load_from_disk(str(path)), split, path, max_rows)
    try:  # a folder of data files (e.g. a downloaded hub snapshot); datasets picks the split
        ds = datasets.load_dataset(str(path), split=split or DEFAULT_SPLIT)
    except Exception as e:  # noqa: BLE001 - datasets raises many types; all mean "not readable"
        raise DataError(f"{path}: could not read this folder with datasets ({type(e).__name__}: {e})") from e
    return _from_dataset(ds, None, path, max_rows)


def _offline() -> bool:
    flags = (os.environ.get(k, "").upper() for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))
    if any(f in ("1", "ON", "YES", "TRUE") for f in flags):
        return True
    import datasets

    return bool(getattr(datasets.config, "HF_HUB_OFFLINE", False))


def _read_hub(name: str, split: Optional[str], max_rows: Optional[int]) -> Iterator[Located]:
    import datasets

    try:
        ds = datasets.load_dataset(name, split=split or DEFAULT_SPLIT)
    except Exception as e:  # noqa: BLE001
        how = (
            f"Download it on a machine with network access, e.g. `datasets.load_dataset('{name}')"
            ".save_to_disk(DIR)` or `hf download --repo-type dataset "
            f"{name} --local-dir DIR`, then set data.path=DIR."
        )
        if _offline():
            raise DataError(
                f"{name}: not a local file or folder, and the Hugging Face Hub is offline "
                f"(HF_HUB_OFFLINE=1), so the dataset cannot be fetched. {how}"
            ) from e
        raise DataError(f"{name}: could not load this dataset from the Hub ({type(e).__name__}: {e}). {how}") from e
    return _from_dataset(ds, None, Path(name), max_rows)


def _read_file(p: Path, split: Optional[str]) -> Iterator[Located]:
    suffix = p.suffix.lower()
    if suffix == ".json":
        return _read_json(p, split)
    if suffix not in FILE_SUFFIXES:
        raise DataError(f"{p}: unsupported file type '{suffix}' (use one of {', '.join(FILE_SUFFIXES)})")
    _no_splits(p, split)
    return _read_jsonl(p) if suffix == ".jsonl" else _read_parquet(p)


def iter_rows(path: str | os.PathLike, split: Optional[str] = None, max_rows: Optional[int] = None
              ) -> Iterator[Located]:
    """(where, raw row) pairs from a file, a `datasets` folder or a hub id, in order: at most
    `max_rows` (the first ones), read as they are asked for. `where` is "line N" in a .jsonl file
    (blank lines count) and "row N" elsewhere, 1-based. Close it (`contextlib.closing`) when stopping
    early to release the file at once."""
    if max_rows is not None and max_rows < 1:
        raise DataError(f"{path}: max_rows must be at least 1, got {max_rows}")
    p = Path(os.path.expanduser(str(path)))
    if p.is_dir():
        rows = _read_folder(p, split, max_rows)
    elif p.is_file():
        rows = _read_file(p, split)
    elif HUB_ID.match(str(path)) and not str(path).lower().endswith(FILE_SUFFIXES):
        rows = _read_hub(str(path), split, max_rows)
    else:
        raise DataError(f"{path}: no such file or folder")
    return _first(rows, max_rows)


def _first(rows: Iterator[Located], max_rows: Optional[int]) -> Iterator[Located]:
    """The first `max_rows` of `rows` (all with None); closing this closes `rows` (and its file)."""
    try:
        yield from islice(rows, max_rows)
    finally:
        close = getattr(rows, "close", None)
        if close is not None:
            close()


def load_rows(path: str | os.PathLike, split: Optional[str] = None, max_rows: Optional[int] = None) -> list[dict]:
    """Raw rows from a file, a `datasets` folder or a hub id; at most `max_rows` (the first ones).

    `split` picks a split where the source has several (a DatasetDict, {split: rows} JSON, a hub
    dataset); a source without splits answers only to None or "train". No rows is an error.
    """
    with contextlib.closing(iter_rows(path, split, max_rows)) as located:
        rows = [row for _, row in located]
    if not rows:
        raise DataError(f"{describe(path, split)}: no rows")
    return rows


def load_preference_rows(
    path: str | os.PathLike, split: Optional[str] = None, max_rows: Optional[int] = None, strict: bool = False
) -> tuple[list[dict], dict[str, int]]:
    """`load_rows` + `normalize_rows`, a row at a time: kept {"prompt", "chosen", "rejected"} rows and
    drop counts; the raw rows are not held."""
    source = describe(path, split)
    with contextlib.closing(iter_rows(path, split, max_rows)) as located:
        rows, drops = normalize_located(located, source, strict)
    if not rows:
        raise DataError(f"{source}: no rows" if not any(drops.values()) else
                        f"{source}: no usable rows (all dropped: {drops})")
    return rows, drops
