"""Reading an offline W&B run back: the records of a `run-<id>.wandb` file, decoded with wandb's protobufs.

wandb 0.31 writes its transaction log from the Go core and ships no Python reader, so this is a small
one. The file is a LevelDB-style log: a 7-byte file header (b":W&B", magic 0xBEE1, version 0), then
32 KiB blocks of chunks, each chunk a 7-byte header (crc32c, payload length, type: 1 full, 2 first,
3 middle, 4 last) and its payload; a block's tail shorter than a chunk header is zero padding. The
payloads of one full / first..last sequence join into one serialized `wandb_internal_pb2.Record`.
Used by tests/test_wandb_records.py.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

BLOCK = 32768
HEADER = 7
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def chunks_payloads(data: bytes) -> Iterator[bytes]:
    """The joined payloads of a .wandb file's chunks (one per record)."""
    ident, magic, version = struct.unpack("<4sHB", data[:HEADER])
    assert ident == b":W&B" and magic == 0xBEE1 and version == 0, (ident, magic, version)
    pos, parts = HEADER, []
    while pos + HEADER <= len(data):
        left_in_block = BLOCK - pos % BLOCK
        if left_in_block < HEADER:  # padding at a block's end
            pos += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0 and length == 0:  # zero fill past the last record
            break
        payload = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == FULL:
            yield payload
        elif kind == FIRST:
            parts = [payload]
        elif kind == MIDDLE:
            parts.append(payload)
        elif kind == LAST:
            yield b"".join([*parts, payload])
            parts = []


def read_records(path: Path) -> list[Any]:
    """Every `Record` protobuf of one .wandb file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb

    records = []
    for payload in chunks_payloads(Path(path).read_bytes()):
        record = pb.Record()
        record.ParseFromString(payload)
        records.append(record)
    return records


def _value(item: Any) -> Any:
    return json.loads(item.value_json)


def _key(item: Any) -> str:
    return item.key or "/".join(item.nested_key)


@dataclass
class OfflineRun:
    """What a .wandb file says about its run: identity, config, history rows, summary and exit."""

    path: Path
    id: str = ""
    name: str = ""
    group: str = ""
    job_type: str = ""
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    exit_code: int | None = None


def read_run(path: Path) -> OfflineRun:
    run = OfflineRun(Path(path))
    for record in read_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run.id, run.name, run.group, run.job_type = r.run_id, r.display_name, r.run_group, r.job_type
            run.tags = list(r.tags)
            run.config.update({_key(i): _value(i) for i in r.config.update})
        elif kind == "config":
            run.config.update({_key(i): _value(i) for i in record.config.update})
        elif kind == "history":
            run.history.append({_key(i): _value(i) for i in record.history.item})
        elif kind == "summary":
            run.summary.update({_key(i): _value(i) for i in record.summary.update})
            for i in record.summary.remove:
                run.summary.pop(_key(i), None)
        elif kind == "exit":
            run.exit_code = record.exit.exit_code
    return run


def offline_runs(folder: Path) -> list[OfflineRun]:
    """Every offline run under `folder` (any depth), oldest file first."""
    return [read_run(p) for p in sorted(Path(folder).rglob("offline-run-*/run-*.wandb"))]
