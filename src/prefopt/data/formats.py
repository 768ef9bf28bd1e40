"""Reading preference data from wherever the user keeps it: `data.path` may name

- a `.jsonl` file (one JSON object per line), a `.json` file (a list of rows, or {split: rows}),
- a `.parquet` file,
- a folder written by `datasets` (`save_to_disk`, a Dataset or a DatasetDict whose `split` is picked),
- any other local folder `datasets.load_dataset` understands (e.g. a downloaded hub snapshot),
- a Hugging Face Hub id (e.g. HuggingFaceH4/ultrafeedback_binarized), loaded with `datasets`.

`load_rows` returns raw rows; `load_preference_rows` also normalizes them (see rows.py).
Exercised by `pytest tests/data/test_formats.py` and `python src/run.py data=jsonl data.path=FILE`.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Optional

from prefopt.data.errors import DataError
from prefopt.data.rows import normalize_row, normalize_rows

__all__ = ["load_rows", "load_preference_rows", "normalize_row", "normalize_rows", "describe"]

HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")
FILE_SUFFIXES = (".jsonl", ".json", ".parquet")
DEFAULT_SPLIT = "train"


def describe(path: str | os.PathLike, split: Optional[str]) -> str:
    """How errors name a source: the path, plus the split when one was picked."""
    return f"{path} [split {split}]" if split else str(path)


def _cap(rows: list, max_rows: Optional[int]) -> list:
    return rows if max_rows is None else rows[:max_rows]


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


def _read_parquet(path: Path, max_rows: Optional[int]) -> list[dict]:
    """Rows of a parquet file, or a DataError naming the file when it is not readable parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"{path}: not a readable parquet file ({first})") from None
    return _cap(table.to_pylist(), max_rows)


def _read_jsonl(path: Path, max_rows: Optional[int]) -> list[dict]:
    rows = []
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            if max_rows is not None and len(rows) >= max_rows:
                break
            line = _decode_line(raw, path, line_no)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}, line {line_no}: broken JSON line ({e.msg} at column {e.colno})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}, line {line_no}: expected a JSON object, got {type(row).__name__}")
            rows.append(row)
    return rows


def _read_json(path: Path, split: Optional[str], max_rows: Optional[int]) -> list:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _not_utf8(path, raw, e) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        hint = " (one object per line is JSON Lines: name the file .jsonl)" if e.msg == "Extra data" else ""
        raise DataError(f"{path}: broken JSON ({e.msg} at line {e.lineno}, column {e.colno}){hint}") from None
    if isinstance(data, dict):
        if not data or not all(isinstance(v, list) for v in data.values()):
            raise DataError(f"{path}: a JSON object must map split names to lists of rows")
        data = _pick_split(data, split, path)
    elif isinstance(data, list):
        _no_splits(path, split)
    else:
        raise DataError(f"{path}: expected a list of rows or {{split: rows}}, got {type(data).__name__}")
    return _cap(data, max_rows)


def _from_dataset(ds: Any, split: Optional[str], path: Path, max_rows: Optional[int]) -> list[dict]:
    """Rows of a `datasets` Dataset, or of the chosen split of a DatasetDict."""
    if hasattr(ds, "keys"):  # DatasetDict
        ds = _pick_split(dict(ds), split, path)
    else:
        _no_splits(path, split)
    if max_rows is not None and max_rows < len(ds):
        ds = ds.select(range(max_rows))
    return ds.to_list()


def _read_folder(path: Path, split: Optional[str], max_rows: Optional[int]) -> list[dict]:
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


def _read_hub(name: str, split: Optional[str], max_rows: Optional[int]) -> list[dict]:
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


def load_rows(path: str | os.PathLike, split: Optional[str] = None, max_rows: Optional[int] = None) -> list[dict]:
    """Raw rows from a file, a `datasets` folder or a hub id; at most `max_rows` (the first ones).

    `split` picks a split where the source has several (a DatasetDict, {split: rows} JSON, a hub
    dataset); a source without splits answers only to None or "train". No rows is an error.
    """
    if max_rows is not None and max_rows < 1:
        raise DataError(f"{path}: max_rows must be at least 1, got {max_rows}")
    p = Path(os.path.expanduser(str(path)))
    if p.is_dir():
        rows = _read_folder(p, split, max_rows)
    elif p.is_file():
        suffix = p.suffix.lower()
        if suffix == ".jsonl":
            _no_splits(p, split)
            rows = _read_jsonl(p, max_rows)
        elif suffix == ".json":
            rows = _read_json(p, split, max_rows)
        elif suffix == ".parquet":
            _no_splits(p, split)
            rows = _read_parquet(p, max_rows)
        else:
            raise DataError(f"{p}: unsupported file type '{suffix}' (use one of {', '.join(FILE_SUFFIXES)})")
    elif HUB_ID.match(str(path)) and not str(path).lower().endswith(FILE_SUFFIXES):
        rows = _read_hub(str(path), split, max_rows)
    else:
        raise DataError(f"{path}: no such file or folder")
    if not rows:
        raise DataError(f"{describe(path, split)}: no rows")
    return rows


def load_preference_rows(
    path: str | os.PathLike, split: Optional[str] = None, max_rows: Optional[int] = None, strict: bool = False
) -> tuple[list[dict], dict[str, int]]:
    """`load_rows` + `normalize_rows`: kept {"prompt", "chosen", "rejected"} rows and drop counts."""
    source = describe(path, split)
    rows, drops = normalize_rows(load_rows(path, split, max_rows), source, strict)
    if not rows:
        raise DataError(f"{source}: no usable rows (all dropped: {drops})")
    return rows, drops
