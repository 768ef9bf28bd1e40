"""Nothing on disk runs code or resumes silently when damaged (prefopt.train.ckpt_io, prefopt.train.resume,
prefopt.store.lockfile): a crafted pickle as a checkpoint runs nothing on any path that reads one; a
checkpoint's bytes are checked against the checksum written with it, and a damaged newest checkpoint is
skipped for the previous good one; checkpoints are written whole in their own folder (not `$TMPDIR`);
a lock file replaced by a symbolic link is refused, its target untouched."""

import json
import os
from pathlib import Path

import pytest
import torch

from prefopt.errors import CacheError, ResumeMismatch
from prefopt.store.cache import build_lock
from prefopt.train import ckpt_io
from prefopt.train.ckpt_io import UNVERIFIED, SafeCheckpointIO, save_verified, sum_path, verify
from prefopt.train.resume import last_checkpoint, read_record, resolve_ckpt_path


class Payload:
    """Unpickling this creates `marker`: proof that code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def a_checkpoint(step: int = 3) -> dict:
    return {"global_step": step, "state_dict": {"w": torch.arange(100_000, dtype=torch.float32)},
            "prefopt_run": {"version": 1, "config": {"loss.beta": 0.1}}}


def plant(path: Path, marker: Path, with_sum: bool) -> None:
    """A crafted checkpoint; `with_sum`: its .sum matches (a writer of the folder can forge one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"global_step": 9, "state_dict": {}, "prefopt_run": Payload(marker)}
    if with_sum:
        save_verified(payload, path)
    else:
        torch.save(payload, path)


def test_the_planted_payload_is_live(tmp_path):
    """The payload does run when unpickled the unsafe way, so the tests below can fail."""
    marker = tmp_path / "ran"
    plant(tmp_path / "x.ckpt", marker, with_sum=False)
    torch.load(tmp_path / "x.ckpt", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("with_sum", [False, True])
def test_a_crafted_checkpoint_runs_nothing_on_any_reading_path(tmp_path, with_sum):
    marker = tmp_path / "ran"
    ckpt = tmp_path / "run" / "checkpoints" / "last.ckpt"
    plant(ckpt, marker, with_sum)
    with pytest.raises(ResumeMismatch, match="unreadable"):
        read_record(ckpt)
    with pytest.raises(ResumeMismatch, match="last.ckpt"):
        resolve_ckpt_path(str(ckpt), tmp_path / "run")  # ckpt_path=<file>
    assert last_checkpoint(tmp_path / "run") is None  # ckpt_path=last / last_or_fresh / a SLURM requeue
    with pytest.raises(Exception, match="[Ww]eights only load failed"):
        SafeCheckpointIO().load_checkpoint(ckpt)  # Lightning's own load
    assert not marker.exists()


def test_a_run_record_that_is_not_a_mapping_is_one_line(tmp_path):
    ckpt = tmp_path / "x.ckpt"
    save_verified({"state_dict": {}, "prefopt_run": [1, 2]}, ckpt)
    with pytest.raises(ResumeMismatch, match=r"run record is a list, not a mapping"):
        read_record(ckpt)
    save_verified([1, 2, 3], tmp_path / "y.ckpt")
    with pytest.raises(ResumeMismatch, match=r"holds a list, not a Lightning checkpoint"):
        read_record(tmp_path / "y.ckpt")


def test_checksum_written_with_the_checkpoint_and_checked(tmp_path):
    ckpt = tmp_path / "last.ckpt"
    save_verified(a_checkpoint(), ckpt)
    record = json.loads(sum_path(ckpt).read_text())
    assert record["bytes"] == ckpt.stat().st_size
    assert verify(ckpt) is None
    assert read_record(ckpt)["config"] == {"loss.beta": 0.1}

    data = bytearray(ckpt.read_bytes())
    middle = len(data) // 2  # inside the weight tensor's bytes
    data[middle:middle + 40] = bytes(b ^ 0xFF for b in data[middle:middle + 40])
    ckpt.write_bytes(bytes(data))
    assert "differ from the checksum" in verify(ckpt)
    with pytest.raises(ResumeMismatch, match="differ from the checksum"):
        SafeCheckpointIO().load_checkpoint(ckpt)

    data[middle:middle + 65536] = bytes(65536)  # 64 KB zeroed
    ckpt.write_bytes(bytes(data))
    assert "differ from the checksum" in verify(ckpt)

    ckpt.write_bytes(bytes(data[: len(data) - 65536]))  # cut short
    assert f"{len(data) - 65536} bytes where {len(data)} were written" in verify(ckpt)

    sum_path(ckpt).unlink()
    assert verify(ckpt) == UNVERIFIED


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous_good_one(tmp_path, caplog):
    folder = tmp_path / "checkpoints"
    older, newest = folder / "epoch=0-step=3.ckpt", folder / "last.ckpt"
    save_verified(a_checkpoint(3), older)
    save_verified(a_checkpoint(6), newest)
    os.utime(older, (1, 1))  # older by mtime
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    newest.write_bytes(bytes(data))
    assert last_checkpoint(tmp_path) == older
    assert "skipping" in caplog.text and "last.ckpt" in caplog.text and "trying the previous" in caplog.text


def test_checkpoints_are_written_in_their_own_folder_whole(tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setenv("TMPDIR", str(tmp_path / "no-such-tmpdir"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-tmpdir"))
    io = SafeCheckpointIO()
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint(a_checkpoint(3), ckpt)
    assert io.load_checkpoint(ckpt)["global_step"] == 3

    def fails(obj, f):
        f.write(b"partial bytes")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ckpt_io.torch, "save", fails)
    with pytest.raises(OSError, match="No space"):
        io.save_checkpoint(a_checkpoint(6), ckpt)
    monkeypatch.undo()
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["last.ckpt", "last.ckpt.sum"]  # no temp left
    assert SafeCheckpointIO().load_checkpoint(ckpt)["global_step"] == 3  # the old one, whole

    io.remove_checkpoint(ckpt)
    assert list(ckpt.parent.iterdir()) == []


def test_a_symlinked_lock_file_is_refused_and_its_target_untouched(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    final = tmp_path / "cache" / "sft" / "abc123"
    final.parent.mkdir(parents=True)
    (final.parent / f".{final.name}.lock").symlink_to(target)
    with pytest.raises(CacheError, match="symbolic link"):
        with build_lock(final):
            pass
    assert target.read_text() == "keep me"


def test_a_new_lock_is_created_and_reused(tmp_path):
    final = tmp_path / "sft" / "abc"
    final.parent.mkdir()
    for _ in range(2):
        with build_lock(final):
            info = json.loads((final.parent / ".abc.lock").read_text())
            assert info["pid"] == os.getpid()


@pytest.mark.slow
def test_a_run_with_flipped_checkpoint_bytes_resumes_from_the_previous_good_one(cache_root, tmp_path):
    """40 bytes flipped inside last.ckpt's weights: the resume says so in one line and takes the periodic
    checkpoint before it, instead of resuming silently from damaged weights."""
    from test_run import SMALL_SORT, run_cli

    run_dir = tmp_path / "run"
    args = [*SMALL_SORT, "loss=dpo", "logger=none", "trainer.max_steps=8", "checkpoint.every_n_train_steps=4",
            "checkpoint.keep=-1", f"hydra.run.dir={run_dir}"]
    proc = run_cli(args, cache_root, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = run_dir / "checkpoints" / "last.ckpt"
    data = bytearray(last.read_bytes())
    data[len(data) // 2: len(data) // 2 + 40] = bytes(40)
    last.write_bytes(bytes(data))
    (run_dir / "results.json").unlink()  # as if the run had been killed after its last checkpoint
    proc = run_cli([*args, "ckpt_path=last"], cache_root, tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-2000:]
    assert "skipping" in out and "last.ckpt: its bytes differ from the checksum" in out
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed"
    assert results["info"]["resumed_from"]["step"] == 8  # epoch=0-step=8.ckpt, the same step, intact
