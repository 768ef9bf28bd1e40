"""Fault injection into the artifact cache (prefopt.store.cache and its users) and the data readers.

Every kind of damage to a built artifact (truncated, zeroed, garbage bytes, deleted file, a marker
without checksums) is named and rebuilt under the lock; a read-only cache says so in one line; a
killed builder's temporary folder is removed; a run waiting on a held lock says who holds it and
gives up after `lock_timeout_s`; folders follow the umask; the sort task's SFT weights and pairs and
the reference log-prob tables are rebuilt when damaged; non-UTF-8 text and bad parquet are DataErrors.
"""

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from prefopt.store import cache
from prefopt.store.cache import DONE_MARKER, artifact_counts, artifact_problem, cached_dir
from prefopt.data.errors import DataError
from prefopt.data.formats import load_rows
from prefopt.models.choose import choose_start
from prefopt.errors import CacheError
from prefopt.tasks.base import load_pairs_split

ROOT = Path(__file__).resolve().parents[1]
PAYLOAD = {"weights.bin": bytes(range(256)) * 64, "meta.json": b'{"n_pairs": 3}'}


def build_for(task, model_cfg, cache_root):
    """`task.build` with the start a run would choose for `model_cfg` (prefopt.config.plan chooses it once)."""
    return task.build(choose_start(model_cfg, task), model_cfg, cache_root)


def builder(calls):
    def build(out):
        calls.append(out)
        for name, data in PAYLOAD.items():
            (out / name).write_bytes(data)
        return {"weights.bin": 64}
    return build


def damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif how == "zero":
        path.write_bytes(data[:16] + bytes(len(data) - 16))  # header kept, same size
    elif how == "garbage":
        path.write_bytes(data[:100] + os.urandom(64) + data[164:])
    elif how == "delete":
        path.unlink()


@pytest.fixture(autouse=True)
def fresh_memo():
    cache._verified.clear()
    yield
    cache.configure(lock_timeout_s=cache.DEFAULT_LOCK_TIMEOUT_S)


@pytest.mark.parametrize("how", ["truncate", "zero", "garbage", "delete"])
def test_damaged_file_is_named_and_rebuilt(tmp_path, capsys, how):
    calls = []
    folder = cached_dir(tmp_path, "kind", "k1", builder(calls))
    assert artifact_counts(folder) == {"weights.bin": 64} and len(calls) == 1
    manifest = json.loads((folder / DONE_MARKER).read_text())
    assert set(manifest["files"]) == {"weights.bin", "meta.json"}
    damage(folder / "weights.bin", how)
    cache._verified.clear()  # a new process
    assert "weights.bin" in artifact_problem(folder)
    again = cached_dir(tmp_path, "kind", "k1", builder(calls))
    assert len(calls) == 2 and (again / "weights.bin").read_bytes() == PAYLOAD["weights.bin"]
    err = capsys.readouterr().err
    assert f"{folder / 'weights.bin'}" in err and "rebuilding kind/k1" in err
    assert artifact_problem(again) is None


def test_hit_is_hashed_once_per_process(tmp_path, monkeypatch):
    cached_dir(tmp_path, "kind", "k", builder([]))
    hashed = []
    real = cache.file_digest
    monkeypatch.setattr(cache, "file_digest", lambda p: hashed.append(p) or real(p))
    for _ in range(3):
        cached_dir(tmp_path, "kind", "k", builder([]))
    assert hashed == []  # verified when built; later uses in this process trust that
    cache._verified.clear()
    cached_dir(tmp_path, "kind", "k", builder([]))
    assert len(hashed) == 2


def test_marker_without_checksums_is_rebuilt(tmp_path, capsys):
    folder = tmp_path / "kind" / "old"
    folder.mkdir(parents=True)
    (folder / "weights.bin").write_bytes(b"\0" * 10)
    (folder / DONE_MARKER).write_text("old")  # what earlier versions wrote
    calls = []
    cached_dir(tmp_path, "kind", "old", builder(calls))
    assert len(calls) == 1 and "records no checksums" in capsys.readouterr().err


def test_read_only_cache(tmp_path, monkeypatch):
    calls = []
    folder = cached_dir(tmp_path, "kind", "k", builder(calls))
    monkeypatch.setattr(cache.os, "access", lambda path, mode: False)  # as a non-root user would see it
    assert cached_dir(tmp_path, "kind", "k", builder(calls)) == folder and len(calls) == 1  # complete: fine
    with pytest.raises(CacheError, match=r"read-only and kind/missing is missing: point paths.cache_dir"):
        cached_dir(tmp_path, "kind", "missing", builder(calls))
    damage(folder / "meta.json", "truncate")
    cache._verified.clear()
    with pytest.raises(CacheError, match=r"read-only and kind/k is damaged \(.*meta.json has 7 bytes, 14 when"):
        cached_dir(tmp_path, "kind", "k", builder(calls))
    assert len(calls) == 1


def test_artifacts_follow_the_umask(tmp_path):
    old = os.umask(0o002)
    try:
        folder = cached_dir(tmp_path, "kind", "k", builder([]))
    finally:
        os.umask(old)
    assert folder.stat().st_mode & 0o777 == 0o775  # not mkdtemp's 0700
    assert (folder / "weights.bin").stat().st_mode & 0o777 == 0o664


KILLED_BUILDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    sys.path.insert(0, {src!r})
    from prefopt.store.cache import cached_dir
    def build(out):
        (out / "half.bin").write_bytes(b"x" * 100)
        print("building", flush=True)
        time.sleep(60)
    cached_dir({root!r}, "kind", "k", build)
""")


def start_builder(tmp_path):
    script = KILLED_BUILDER.format(src=str(ROOT / "src"), root=str(tmp_path))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "building"
    return proc


@pytest.mark.slow
def test_killed_builder_leaves_nothing_trusted_and_its_temp_folder_is_removed(tmp_path):
    proc = start_builder(tmp_path)
    proc.kill()
    proc.wait()
    leftovers = list((tmp_path / "kind").glob(".k-*"))
    assert len(leftovers) == 1 and leftovers[0].is_dir()
    calls = []
    folder = cached_dir(tmp_path, "kind", "k", builder(calls))
    assert len(calls) == 1 and not list((tmp_path / "kind").glob(".k-*")) and artifact_problem(folder) is None


@pytest.mark.slow
def test_waiting_on_a_held_lock_says_who_and_gives_up(tmp_path, capsys):
    proc = start_builder(tmp_path)  # holds the lock of kind/k while it "builds"
    try:
        cache.configure(lock_timeout_s=0.5)
        started = time.time()
        with pytest.raises(CacheError, match=rf"gave up after \d+s waiting for the build of kind/k .*pid {proc.pid} "
                                             r"on .* since .*; raise paths.lock_timeout_s"):
            cached_dir(tmp_path, "kind", "k", builder([]))
        assert time.time() - started < 5
        assert f"being built by pid {proc.pid}" in capsys.readouterr().err
    finally:
        proc.kill()
        proc.wait()


def test_pair_count_is_checked(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"prompt": f"{i}>", "chosen": "a", "rejected": "b"}) + "\n" for i in range(4)))
    assert len(load_pairs_split(pairs, 0.25, expected=4)[0]) == 3
    with pytest.raises(CacheError, match=r"pairs.jsonl holds 4 pairs, but 6 were built"):
        load_pairs_split(pairs, 0.25, expected=6)
    pairs.write_text('{"prompt": "1>", "cho')
    with pytest.raises(CacheError, match=r"pairs.jsonl is unreadable \(JSONDecodeError"):
        load_pairs_split(pairs, 0.25)


# ---- real artifacts ------------------------------------------------------------------------------
TINY = {"name": "tiny", "tiny": {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
                                 "intermediate_size": 32, "max_position_embeddings": 64}}


def small_sort():
    from prefopt.tasks.sort import SortTask

    return SortTask(n_sft=300, sft_steps=30, sft_batch_size=32, n_pair_prompts=40, samples_per_prompt=3,
                    n_eval_prompts=8, eval_fraction=0.25, max_new_tokens=14, seed=1)


@pytest.mark.parametrize("target,how", [("sort_sft/model.safetensors", "garbage"), ("sort_pairs/pairs.jsonl", "cut")])
def test_sort_task_rebuilds_damaged_weights_and_pairs(tmp_path, capsys, target, how):
    first = build_for(small_sort(), TINY, tmp_path)
    kind, name = target.split("/")
    path = next((tmp_path / kind).glob(f"*/{name}"))
    if how == "cut":  # at a line boundary: still valid JSON lines, half the pairs
        lines = path.read_text().splitlines(keepends=True)
        path.write_text("".join(lines[: len(lines) // 2]))
    else:
        damage(path, how)
    cache._verified.clear()
    again = build_for(small_sort(), TINY, tmp_path)
    assert f"{path}" in capsys.readouterr().err
    assert again.train_rows == first.train_rows and again.eval_rows == first.eval_rows
    assert artifact_problem(path.parent) is None


def test_zeroed_reference_table_is_rebuilt(tmp_path, capsys):
    from omegaconf import OmegaConf

    from prefopt.scoring.logp_cache import attach_caches
    from prefopt.losses import DPOLoss
    from prefopt.train.module import PreferenceModule
    from test_logp_cache import CFG, data, model
    from prefopt.tasks.sort import build_sort_tokenizer

    tok = build_sort_tokenizer()
    dm = data(tok)
    first = PreferenceModule(model(tok), DPOLoss())
    attach_caches(CFG, first.frozen, dm, tmp_path)
    expected = first._table_reference_train_logps.clone()  # the loaded table maps the file
    table = next(tmp_path.glob("logps/reference-*/train.safetensors"))
    raw = table.read_bytes()
    header = 8 + int.from_bytes(raw[:8], "little")
    table.write_bytes(raw[:header] + bytes(len(raw) - header))  # loads fine, every log-prob 0
    cache._verified.clear()
    second = PreferenceModule(model(tok), DPOLoss())
    info = attach_caches(OmegaConf.create(CFG), second.frozen, dm, tmp_path)["logp_cache"]
    assert info["tables"]["reference"]["status"] == "built"
    assert "train.safetensors does not match its checksum" in capsys.readouterr().err
    assert torch.equal(second._table_reference_train_logps, expected)


# ---- data files ----------------------------------------------------------------------------------
def test_non_utf8_jsonl_and_json_name_file_and_line(tmp_path):
    jsonl = tmp_path / "a.jsonl"
    jsonl.write_bytes(b'{"prompt": "a", "chosen": "b", "rejected": "c"}\n{"prompt": "caf\xe9", "chosen": "b"}\n')
    with pytest.raises(DataError, match=rf"^{jsonl}, line 2: not UTF-8 text \(byte 0xe9 at column 16\)"):
        load_rows(jsonl)
    js = tmp_path / "a.json"
    js.write_bytes(b'[\n {"prompt": "a"},\n {"prompt": "\xff"}\n]')
    with pytest.raises(DataError, match=rf"^{js}, line 3: not UTF-8 text \(byte 0xff at column 14\)"):
        load_rows(js)


def test_unreadable_parquet_names_the_file(tmp_path):
    bad = tmp_path / "pairs.parquet"
    bad.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(DataError, match=rf"^{bad}: not a readable parquet file \("):
        load_rows(bad)


def test_eval_start_side_without_a_usable_cache_is_computed_for_the_run(tmp_path, monkeypatch, capsys):
    from prefopt.eval import cache as eval_cache
    from prefopt.tasks.sort import build_sort_tokenizer
    from test_logp_cache import model

    def unusable(*args, **kwargs):
        raise CacheError(f"the cache {tmp_path} is read-only and eval_start/x is missing")

    tok = build_sort_tokenizer()
    monkeypatch.setattr(eval_cache, "cached_dir", unusable)
    monkeypatch.setattr(eval_cache, "start_side", lambda *args, **kwargs: {"rewards": [0.5]})
    side, status = eval_cache.cached_start_side(tmp_path, model(tok), tok, ["31>"], None, {"task": "sort"},
                                                max_new_tokens=4, temperature=1.0, seed=0, batch_size=2)
    assert (side, status) == ({"rewards": [0.5]}, "computed, not cached")
    assert "computed for this run only: the cache" in capsys.readouterr().err
