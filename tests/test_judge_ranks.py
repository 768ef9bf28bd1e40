"""The judge's scoring split over data-parallel ranks (prefopt/eval/rank_share.py), for real: 2 gloo
processes on CPU score a tiny reward model's answers, each its contiguous share, and rank 0 gets exactly
one process's scores; a rank's failing score reaches rank 0 as its one-line error while that rank goes
on serving; rank 0 failing before it asks anything still releases the other rank. End to end, a
`trainer=ddp` run on 2 CPU processes shares the judge's scoring between its ranks, and its
judgements.jsonl holds the scores one process gives the same answers."""

import json
import os
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from prefopt.eval.judge import JudgeError, JudgeScores
from prefopt.eval.judges.reward_model import RewardModelJudge
from prefopt.eval.rank_share import Channel, JudgeRanks, SharedJudge, channel_for, share_of
from test_judge import PROMPTS, RESPONSES, reward_model_folder

PAIRS = (PROMPTS + PROMPTS[:2], RESPONSES + ["yes it is", "no"])  # 5 pairs: shares of 2 and 3


class Flaky(RewardModelJudge):
    """The reward model, but a response "boom" is a score that is not a number (as `scored` reports it)."""

    def score(self, prompts, responses):
        if "boom" in responses:
            raise JudgeError("judge=reward_model scored the policy's answer to the prompt 'boom' nan, not a number")
        return super().score(prompts, responses)


def two_ranks(rank, folder, init, out):
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=2)
    try:
        channel = Channel(rank, 2, dist.new_group(backend="gloo", timeout=timedelta(seconds=60)))
        ranks = JudgeRanks(Flaky(str(folder), batch_size=2), channel)
        if rank == 1:
            served = ranks.serve()
            failed_early = JudgeRanks(Flaky(str(folder)), channel).serve()
            torch.save({"served": served, "failed_early": failed_early}, f"{out}/1.pt")
            return
        with ranks as judge:
            assert isinstance(judge, SharedJudge)
            scores = judge.score(*PAIRS)
            try:
                judge.score(PAIRS[0], PAIRS[1][:4] + ["boom"])  # "boom" is in rank 1's share
                error = None
            except JudgeError as err:
                error = str(err)
            again = judge.score(*PAIRS)  # rank 1 still serves
        try:
            with JudgeRanks(Flaky(str(folder)), channel):
                raise ValueError("sampling failed on rank 0")
        except ValueError:
            pass
        torch.save({"scores": scores, "error": error, "again": again}, f"{out}/0.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_score_as_one_process(tmp_path):
    folder = reward_model_folder(tmp_path / "rm")
    os.environ.pop("LOCAL_RANK", None)
    mp.spawn(two_ranks, args=(folder, f"file://{tmp_path / 'pg'}", str(tmp_path)), nprocs=2, join=True)
    zero, one = torch.load(tmp_path / "0.pt", weights_only=False), torch.load(tmp_path / "1.pt", weights_only=False)
    alone = RewardModelJudge(str(folder), batch_size=2).score(*PAIRS)
    assert zero["scores"].rewards == pytest.approx(alone.rewards, abs=1e-6) and zero["scores"].truncated == 0
    assert len(set(round(r, 4) for r in alone.rewards)) == 5  # distinct pairs, distinct scores
    assert zero["again"].rewards == zero["scores"].rewards
    assert zero["error"].startswith("judge=reward_model scored the policy's answer to the prompt 'boom' nan")
    assert one == {"served": 3, "failed_early": 0}  # three requests, then released; and released at once


def test_contiguous_shares_cover_every_pair_once():
    assert [list(share_of(5, r, 2)) for r in (0, 1)] == [[0, 1], [2, 3, 4]]
    assert [list(share_of(2, r, 4)) for r in range(4)] == [[], [0], [], [1]]
    assert sorted(i for r in range(3) for i in share_of(10, r, 3)) == list(range(10))


def test_one_process_judges_alone():
    from lightning.pytorch.strategies import SingleDeviceStrategy

    judge = RewardModelJudge("/nowhere")
    assert channel_for(SingleDeviceStrategy("cpu"), 60) is None
    ranks = JudgeRanks(judge, None)
    assert ranks.serve() == 0
    with ranks as same:
        assert same is judge
    assert JudgeRanks(None, Channel(0, 2)).judge is None  # no judge beside the oracle: nothing shared


def test_a_ranks_error_is_raised_on_rank_zero_in_one_line():
    from prefopt.eval.rank_share import merged

    ok = ("scores", JudgeScores([1.0, 2.0], 1))
    assert merged([ok, ("scores", JudgeScores([3.0], 0))], 3) == JudgeScores([1.0, 2.0, 3.0], 1)
    with pytest.raises(JudgeError, match="^judge=x: bad$"):
        merged([ok, ("error", "judge", "judge=x: bad")], 3)
    with pytest.raises(RuntimeError, match="the judge failed on data-parallel rank 1: OutOfMemoryError: CUDA"):
        merged([ok, ("error", "OutOfMemoryError", "CUDA out of memory")], 3)


@pytest.mark.slow
def test_a_ddp_run_shares_the_judges_scoring(cache_root, tmp_path):
    from test_run import SMALL_SORT, run_cli

    folder = reward_model_folder(tmp_path / "rm")
    proc = run_cli([*SMALL_SORT, "loss=dpo", "logger=none", "checkpoint.enabled=false", "data.batch_size=8",
                    "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.precision=32-true",
                    "judge=reward_model", f"judge.path={folder}", "judge.batch_size=4",
                    f"hydra.run.dir={tmp_path / 'run'}"], cache_root, tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    lines = [json.loads(x) for x in (tmp_path / "run" / "judgements.jsonl").read_text().splitlines()]
    n = len(lines)
    assert results["info"]["judge_shares"] == [n, n]  # each rank scored half of both sides' n answers
    alone = RewardModelJudge(str(folder), batch_size=4)
    prompts = [r["prompt"] for r in lines]
    policy = alone.rewards(prompts, [r["response"] for r in lines])
    assert [r["score"] for r in lines] == pytest.approx(policy, abs=1e-6)
    assert [r["score_start"] for r in lines] == pytest.approx(
        alone.rewards(prompts, [r["response_start"] for r in lines]), abs=1e-6)
    m = results["metrics"]
    assert m["eval/judge_reward"] == pytest.approx(sum(r["score"] for r in lines) / n)
    assert "eval/oracle_reward" in m
