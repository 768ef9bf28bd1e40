"""Peak memory of reading the first rows of a big preference file, before and after streaming (issue 26).

    python benchmarks/stream_memory.py [--rows 100000] [--row-kb 9.4] [--max-rows 2000]
                                       [--formats jsonl parquet] [--before-rev REV] [--sigint-after S]

Writes a .jsonl file of `--rows` rows of about `--row-kb` KB (prompt/chosen/rejected text; the default is
~0.94 GB) and the same rows as .parquet (row groups of 10,000 rows) in a temporary folder, deleted after.
Each arm reads the file with `load_preference_rows(path, max_rows=...)` in a fresh subprocess and reports
its peak RSS (VmHWM), the RSS after imports and the seconds: "before" is formats.py as of `--before-rev`
(`git show REV:src/prefopt/data/formats.py`, loaded as a module), "after" the working tree's.
`--sigint-after S` also times Ctrl-C: every text of the .jsonl goes to the BPE builder (tokenizer_builder.py,
the revision's and the working tree's) and SIGINT comes S seconds in; it reports how long the builder took
to raise KeyboardInterrupt. Use `--rows 2000` for a quick run. Exercised by running it (its numbers are in
issue 26's report); the streaming itself by `pytest tests/data/test_stream_rows.py`.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
from itertools import islice
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from prefopt.log import PLAIN, get_logger  # noqa: E402

log = get_logger("stream_memory")
BEFORE_REV = "1fb870a"  # the last commit whose formats.py read parquet whole (issue 26)
ROW_GROUP = 10_000

CHILD = r"""
import importlib.util, json, os, signal, sys, threading, time
sys.path.insert(0, os.path.join(sys.argv[1], "src"))
import pyarrow.parquet  # imported in both arms before the baseline is read

def status(key):
    return next(int(l.split()[1]) / 1024 for l in open("/proc/self/status") if l.startswith(key + ":"))

def module(name, path):
    if path == "-":
        return importlib.import_module("prefopt.data." + name)
    spec = importlib.util.spec_from_file_location(name + "_before", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod

kind, path, max_rows, code = sys.argv[2], sys.argv[3], int(sys.argv[4]) or None, sys.argv[5]
if kind == "read":
    formats = module("formats", code)
    base, start = status("VmRSS"), time.time()
    rows, _ = formats.load_preference_rows(path, max_rows=max_rows)
    print(json.dumps({"rows": len(rows), "base_mb": base, "peak_mb": status("VmHWM"), "s": time.time() - start}))
else:
    from prefopt.data.formats import load_preference_rows
    from prefopt.data.source import row_texts
    texts = list(row_texts(load_preference_rows(path)[0]))
    build = module("tokenizer_builder", code).build_bpe_tokenizer
    sent = []
    threading.Timer(float(sys.argv[6]), lambda: (sent.append(time.time()), os.kill(os.getpid(), signal.SIGINT))).start()
    start = time.time()
    try:
        build(texts, vocab_size=4096)
        print(json.dumps({"finished_s": time.time() - start}))
    except KeyboardInterrupt:
        print(json.dumps({"stop_s": time.time() - sent[0], "texts": len(texts)}))
"""


def text_pool(rng: random.Random, n: int, chars: int) -> list[str]:
    """n blocks of about `chars` characters of random words: rows draw from them (fast to write)."""
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 10))) for _ in range(5000)]
    pool = []
    for _ in range(n):
        text = " ".join(rng.choices(words, k=chars // 6))
        pool.append(text[:chars])
    return pool


def make_rows(n_rows: int, row_kb: float, seed: int = 0):
    """Rows of ~row_kb KB as JSON: a prompt (15%), a chosen and a rejected response (42.5% each)."""
    rng = random.Random(seed)
    size = int(row_kb * 1000)
    prompts, answers = text_pool(rng, 500, int(size * 0.15)), text_pool(rng, 2000, int(size * 0.425))
    for i in range(n_rows):
        yield {"prompt": f"{i}: {prompts[i % 500]}", "chosen": answers[(7 * i) % 2000],
               "rejected": answers[(7 * i + 1) % 2000]}


def write_files(folder: Path, n_rows: int, row_kb: float) -> dict[str, Path]:
    """The rows as pairs.jsonl and pairs.parquet (a row group per ROW_GROUP rows, snappy, pyarrow's default)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    jsonl, parquet = folder / "pairs.jsonl", folder / "pairs.parquet"
    rows, writer = make_rows(n_rows, row_kb), None
    with open(jsonl, "w") as fh:
        while chunk := list(islice(rows, ROW_GROUP)):
            fh.writelines(json.dumps(row) + "\n" for row in chunk)
            table = pa.Table.from_pylist(chunk)
            writer = writer or pq.ParquetWriter(parquet, table.schema)
            writer.write_table(table)
    writer.close()
    return {"jsonl": jsonl, "parquet": parquet}


def old_source(folder: Path, rev: str, name: str) -> Path:
    """`src/prefopt/data/<name>.py` as of `rev`, written to a file the child loads as a module."""
    out = folder / f"{name}_before.py"
    show = subprocess.run(["git", "show", f"{rev}:src/prefopt/data/{name}.py"], cwd=ROOT, capture_output=True,
                          text=True)
    if show.returncode != 0:
        sys.exit(f"git show {rev}:src/prefopt/data/{name}.py failed: {show.stderr.strip()}")
    out.write_text(show.stdout)
    return out


def child(*args: object) -> dict:
    proc = subprocess.run([sys.executable, "-c", CHILD, str(ROOT), *map(str, args)], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"child failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def measure_reads(files: dict[str, Path], formats: list[str], max_rows: int, before: Path) -> None:
    log.info(f"{'file':8} {'arm':7} {'rows':>6} {'RSS after imports MB':>21} {'peak RSS MB':>12} "
             f"{'peak - imports':>15} {'seconds':>8}", extra=PLAIN)
    for fmt in formats:
        for arm, code in (("before", before), ("after", "-")):
            r = child("read", files[fmt], max_rows, code)
            log.info(f"{fmt:8} {arm:7} {r['rows']:6d} {r['base_mb']:21.0f} {r['peak_mb']:12.0f} "
                     f"{r['peak_mb'] - r['base_mb']:15.0f} {r['s']:8.2f}", extra=PLAIN)


def measure_sigint(jsonl: Path, before: Path, after_s: float) -> None:
    for arm, code in (("before", before), ("after", "-")):
        r = child("sigint", jsonl, 0, code, after_s)
        if "finished_s" in r:
            log.info(f"tokenizer {arm:7} finished in {r['finished_s']:.1f} s, before SIGINT came", extra=PLAIN)
        else:
            log.info(f"tokenizer {arm:7} SIGINT {after_s:g} s in: KeyboardInterrupt {r['stop_s']:.2f} s later "
                     f"({r['texts']} texts)", extra=PLAIN)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000, help="rows in the generated files")
    parser.add_argument("--row-kb", "--size", type=float, default=9.4, help="size of a row, KB")
    parser.add_argument("--max-rows", type=int, default=2000, help="rows each arm reads (0: all)")
    parser.add_argument("--formats", nargs="+", default=["jsonl", "parquet"], choices=["jsonl", "parquet"])
    parser.add_argument("--before-rev", default=BEFORE_REV, help="git revision of the 'before' arm")
    parser.add_argument("--sigint-after", type=float, default=0.0, help="also time Ctrl-C in the tokenizer")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="stream-memory-") as tmp:
        files = write_files(Path(tmp), args.rows, args.row_kb)
        sizes = ", ".join(f"{k} {p.stat().st_size / 1e9:.2f} GB" for k, p in files.items())
        log.info(f"{args.rows} rows of ~{args.row_kb} KB ({sizes}); max_rows={args.max_rows or 'all'}; "
                 f"before = {args.before_rev}", extra=PLAIN)
        measure_reads(files, args.formats, args.max_rows, old_source(Path(tmp), args.before_rev, "formats"))
        if args.sigint_after:
            old = old_source(Path(tmp), args.before_rev, "tokenizer_builder")
            measure_sigint(files["jsonl"], old, args.sigint_after)


if __name__ == "__main__":
    main()
