"""The study report from a sweep: `python src/analyze.py MULTIRUN_DIR` writes there sensitivity.md,
sensitivity.csv (per method), grid.csv (per grid point), pairwise.csv, runs.csv, curves.csv, tuning_cost.csv
(the expected best after k random trials of each method's grid, k = 1 … grid size) and PNGs.

    python src/run.py -m sweep=beta_sensitivity hydra.sweep.dir=multirun/beta
    python src/analyze.py multirun/beta
    python src/analyze.py multirun/beta --out docs/results/beta_sensitivity
    python src/analyze.py docs/results/beta_sensitivity/runs.csv --out /tmp/again   # from the saved table
    python src/analyze.py multirun/beta --methods rmipo,rmipo_shuffled            # some methods only
    python src/analyze.py multirun/beta --wandb      # also log the report as a W&B run (job_type=study)
    python src/analyze.py docs/results/imdb_sensitivity/runs.csv --price 0.001 --out /tmp/half  # another price of drift
    python src/analyze.py multirun/new --carry docs/results/beta_sensitivity/runs.csv:dpo,ipo   # add methods run before
    python src/analyze.py multirun/paper --scores multirun/paper/alpaca_eval.csv --score eval/alpaca_lc_win_rate

The score, tolerance and default learning rate come from the sweep's config (conf/sweep/<study>.yaml,
key `sweep`); the options below override them. The functions live in prefopt.analysis.

`--scores FILE` attaches scores judged elsewhere as metric columns of runs.csv: AlpacaEval's leaderboard.csv
(rows matched to runs by the `generator` of their generations.json; columns eval/alpaca_lc_win_rate,
eval/alpaca_win_rate, ... as fractions) or any CSV with columns run,metric,value; `--score` ranks by one.

It prints a headline (each method's best score with its 95% interval and learning rate, the verdicts
that hold), then the files it wrote; on stderr, each figure not drawn and why, and a warning when
verdicts rest on fewer seeds than the 5 their error rate was checked with (also in the report).
"""

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `prefopt` even without `pip install -e .`


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", help="a multirun folder (hydra.sweep.dir), or a runs.csv written by this tool")
    parser.add_argument("--out", help="folder for the report (default: the multirun folder)")
    parser.add_argument("--score", help="metric to rank grid points by (default: the sweep's, eval/oracle_reward)")
    parser.add_argument("--price", type=float,
                        help="rank by the score less this much per nat of KL (default: the sweep's sweep.price; "
                             "0: the unpriced score)")
    parser.add_argument("--tolerance", type=float, help="'near the best' margin (default: the sweep's, 0.02)")
    parser.add_argument("--x", help="config key on the x-axis of the score plot (default: loss.beta)")
    parser.add_argument("--methods", help="comma-separated loss config names to keep (default: all)")
    parser.add_argument("--scores", nargs="+", metavar="FILE",
                        help="scores judged elsewhere to attach to the runs: AlpacaEval's leaderboard.csv or a CSV "
                             "with columns run,metric,value (rank by one with --score, e.g. eval/alpaca_lc_win_rate)")
    parser.add_argument("--carry", nargs="+", metavar="SOURCE[:METHODS]",
                        help="append the runs of another study (a multirun folder or a runs.csv), only METHODS "
                             "(comma-separated) of it when given, e.g. a committed study's methods whose code is "
                             "unchanged: --carry docs/results/beta_sensitivity/runs.csv:dpo,ipo,simpo")
    parser.add_argument("--wandb", action="store_true",
                        help="log the tables and plots as one job_type=study W&B run in the runs' project and "
                             "group (offline unless WANDB_MODE=online; upload with `wandb sync`)")
    args = parser.parse_args(argv)

    import matplotlib

    matplotlib.use("Agg")  # files only, no windows
    from prefopt.analysis import analyze

    try:
        written = analyze(args.source, args.out, score=args.score, tolerance=args.tolerance, x=args.x,
                          price=args.price, methods=args.methods.split(",") if args.methods else None,
                          scores=args.scores, carry=args.carry)
    except (FileNotFoundError, KeyError, ValueError) as err:
        print(f"error: {err.args[0] if err.args else err}", file=sys.stderr)
        return 1
    for name, path in written.items():
        print(f"{name:28s} {path}")
    if args.wandb:
        from prefopt.analysis.wandb_study import log_study

        print(f"{'W&B study run':28s} {log_study(args.source, written, scores=args.scores)}")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except BrokenPipeError:  # `... | head` closed stdout early: the report's files are written already
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        raise SystemExit(0)
