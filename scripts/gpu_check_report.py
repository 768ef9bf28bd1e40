"""The table scripts/gpu_check.sh prints: pairs/s, tokens/s, peak memory and MFU per loss, read from each
run's results.json (the perf/* metrics of prefopt.train.perf.ThroughputMonitor), and the device line of the run.

    python scripts/gpu_check_report.py OUT_DIR dpo ipo simpo rmipo

Exits 1 when a loss has no completed run with throughput numbers. Exercised by `pytest tests/test_gpu_check.py`.
"""

import json
import sys
from pathlib import Path


def row(out: Path, loss: str) -> tuple[str, bool]:
    results = out / loss / "results.json"
    if not results.exists():
        return f"{loss:<7} failed: no results.json (see {out / (loss + '.log')})", False
    record = json.loads(results.read_text())
    m = record.get("metrics", {})
    if record.get("status") != "completed" or "perf/pairs_per_s" not in m:
        return f"{loss:<7} failed: {record.get('error') or 'no throughput metrics'} (see {out / (loss + '.log')})", False
    mfu = f"{m['perf/mfu']:.3f}" if "perf/mfu" in m else "n/a"
    return (f"{loss:<8}{m['perf/pairs_per_s']:>10.1f}{m['perf/tokens_per_s']:>12.0f}"
            f"{m['perf/peak_mem_mb']:>10.0f}{mfu:>8}"), True


def device_line(out: Path, losses: list[str]) -> str | None:
    for loss in losses:
        log = out / f"{loss}.log"
        if log.exists():
            for line in log.read_text(errors="replace").splitlines():
                if line.startswith("[prefopt] device:"):
                    return line
    return None


def main(out: Path, losses: list[str]) -> int:
    line = device_line(out, losses)
    if line:
        print(line)
    print(f"{'loss':<8}{'pairs/s':>10}{'tokens/s':>12}{'peak MB':>10}{'MFU':>8}")
    ok = True
    for loss in losses:
        text, good = row(out, loss)
        print(text)
        ok &= good
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1]), sys.argv[2:]))
