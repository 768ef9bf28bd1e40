"""Test-wide settings: offline hubs and W&B, one torch thread, artifacts cached in a session folder."""

import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
sys.path.insert(1, str(Path(__file__).resolve().parent))  # tests/helpers.py from every test folder

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory) -> Path:
    """One artifact cache for the whole session, so tests share the small built artifacts."""
    return tmp_path_factory.mktemp("prefopt-cache")


@pytest.fixture(autouse=True)
def _environment_restored():
    """Every test leaves os.environ as it found it. Lightning's in-process DDP setup exports
    MASTER_PORT, NODE_RANK and LOCAL_RANK; left behind, a later `trainer=ddp` subprocess inherits
    LOCAL_RANK, believes its ranks are launched externally, never starts rank 1 and waits forever."""
    saved = dict(os.environ)
    yield
    os.environ.clear()
    os.environ.update(saved)
