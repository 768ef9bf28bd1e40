"""Checks before work (prefopt.config.preflight) and results.json writes that fail loudly (prefopt.run.results):
an unwritable output folder stops in one line before Hydra starts, a read-only cache is announced,
`paths.lock_timeout_s` reaches the cache, `ckpt_path` is resolved, and a full disk while writing
results.json is an error on stderr with exit status 1 and no `.tmp` left behind. Read-only folders
are simulated with `os.access` (the tests may run as root, for whom nothing is read-only)."""

import errno
import json
import os
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from prefopt.store import cache

from prefopt.config import preflight
from prefopt.errors import ResumeMismatch
from prefopt.run.results import write_results
from test_run import run_cli


def read_only(monkeypatch, *folders):
    """os.access says False for writing into these folders (and what is under them)."""
    real = os.access
    blocked = [Path(f).absolute() for f in folders]

    def access(path, mode):
        path = Path(path).absolute()
        if mode & os.W_OK and any(path == b or b in path.parents for b in blocked):
            return False
        return real(path, mode)

    monkeypatch.setattr(os, "access", access)


@pytest.mark.slow
def test_unwritable_output_folder_stops_before_hydra_in_one_line(cache_root, tmp_path):
    proc = run_cli(["data=sort", "hydra.run.dir=/dev/null/run"], cache_root, tmp_path, timeout=60)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr and "Unable to configure" not in proc.stderr
    assert proc.stderr.strip() == ("error: hydra.run.dir: /dev/null is not a folder, so the run cannot write "
                                   "/dev/null/run; set hydra.run.dir to a folder you can write to (e.g. one in "
                                   "your home or scratch space)")


def test_output_folder_from_the_command_line(tmp_path, monkeypatch):
    assert preflight.check_output_argv([f"hydra.run.dir={tmp_path / 'new' / 'run'}"]) is None
    read_only(monkeypatch, tmp_path)
    problem = preflight.check_output_argv([f"hydra.run.dir={tmp_path / 'new' / 'run'}"])
    assert problem.startswith(f"hydra.run.dir: {tmp_path} is not writable, so the run cannot write")
    assert "hydra.sweep.dir" in preflight.check_output_argv(["-m", f"hydra.sweep.dir={tmp_path}/s"])
    assert f"{tmp_path / 'outputs'}" in preflight.check_output_argv([], cwd=tmp_path)  # the default folder


def test_unwritable_run_folder_in_the_job(tmp_path, monkeypatch, capsys):
    read_only(monkeypatch, tmp_path)
    with pytest.raises(SystemExit) as stop:
        preflight.stop_if_unwritable(tmp_path / "run")
    assert stop.value.code == 1
    assert capsys.readouterr().err.startswith(f"error: hydra.run.dir: {tmp_path} is not writable")


def test_read_only_cache_is_announced_and_lock_timeout_is_set(tmp_path, monkeypatch, capsys):
    cfg = OmegaConf.create({"paths": {"cache_dir": str(tmp_path / "cache"), "lock_timeout_s": 7}, "ckpt_path": None})
    try:
        assert preflight.preflight(cfg, tmp_path / "run") is None
        assert cache._settings["lock_timeout_s"] == 7 and "read-only" not in capsys.readouterr().out
        (tmp_path / "cache").mkdir()
        read_only(monkeypatch, tmp_path / "cache")
        preflight.preflight(cfg, tmp_path / "run")
        assert f"the cache {tmp_path / 'cache'} is read-only" in capsys.readouterr().out
    finally:
        cache.configure(lock_timeout_s=cache.DEFAULT_LOCK_TIMEOUT_S)


def test_ckpt_path_resolution(tmp_path, capsys):
    from prefopt.train.resume import resolve_ckpt_path

    assert resolve_ckpt_path(None, tmp_path) is None
    with pytest.raises(ResumeMismatch, match=r"ckpt_path=last: .*checkpoints has no readable checkpoint.*or_fresh"):
        resolve_ckpt_path("last", tmp_path)
    assert resolve_ckpt_path("last_or_fresh", tmp_path) is None and "starting fresh" in capsys.readouterr().out
    (tmp_path / "checkpoints").mkdir()
    periodic = tmp_path / "checkpoints" / "epoch=0-step=20.ckpt"
    torch.save({"global_step": 20}, periodic)
    os.utime(periodic, (1e9, 1e9))
    last = tmp_path / "checkpoints" / "last.ckpt"
    last.write_bytes(periodic.read_bytes()[:100])  # newer, but cut short by a kill while it was written
    assert resolve_ckpt_path("last", tmp_path) == str(periodic)
    assert f"skipping {last}: the file is unreadable" in capsys.readouterr().err
    hpc = tmp_path / "hpc_ckpt_1.ckpt"  # SLURM's requeue checkpoint, newest
    torch.save({"global_step": 25}, hpc)
    assert resolve_ckpt_path("last_or_fresh", tmp_path) == str(hpc)
    with pytest.raises(ResumeMismatch, match="ckpt_path=nope.ckpt: no such checkpoint"):
        resolve_ckpt_path("nope.ckpt", tmp_path)


def test_full_disk_while_writing_results_is_an_error_not_a_tmp_file(tmp_path, monkeypatch, capsys):
    real = Path.write_text

    def full(self, text, *args, **kwargs):
        real(self, "", *args, **kwargs)  # what a full disk leaves: an empty file
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(SystemExit) as stop:
        write_results(tmp_path / "results.json", status="completed", metrics={})
    assert stop.value.code == 1
    assert list(tmp_path.iterdir()) == []
    assert capsys.readouterr().err.strip() == (f"error: could not write {tmp_path / 'results.json'} (No space left on "
                                               "device); the run's outcome is not recorded")
    monkeypatch.setattr(Path, "write_text", real)
    write_results(tmp_path / "results.json", status="completed", metrics={"a": 1.0})
    assert json.loads((tmp_path / "results.json").read_text())["metrics"] == {"a": 1.0}
