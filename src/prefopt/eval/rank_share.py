"""The judge's scoring split over a run's data-parallel ranks: each rank scores its contiguous share.

After a DDP / FSDP / DeepSpeed fit on N ranks, rank 0 alone holds the trained policy and samples the
answers (prefopt.run.steps), but scoring them with an 8B reward model is the expensive part, so the
other ranks stay alive and score with it: `JudgeRanks.serve` (ranks > 0) waits for scoring requests;
on rank 0 `JudgeRanks.judge` is a `SharedJudge`, whose `score(prompts, responses)` sends every pair to
every rank (a broadcast), scores pairs [r·n/N, (r+1)·n/N) on rank r's own device (`share_of`), and
gathers the shares back onto rank 0 in order, which then checks, writes metrics and judgements.jsonl
exactly as one process does. One process, or a judge that is None: `JudgeRanks.judge` is the judge
itself and nothing is sent.

No rank is left waiting: the messages go over a gloo group of their own (objects, on CPU and GPU runs)
created with `eval.share_timeout_s`, and every rank reaches the same collectives. Rank 0 always tells
the others to stop when the evaluation ends (`JudgeRanks` is a context manager; its exit stops them,
also when the evaluation failed); a rank whose scoring fails sends its one-line error instead of its
share and goes on serving, and rank 0 raises it (a `JudgeError`, e.g. a score that is not a number
naming its prompt, stays one); a rank that waits past the timeout, or whose messages fail, stops
serving with a warning (exit 0, so Lightning does not kill rank 0), and rank 0, finding the messages
broken, scores what is left alone. Called by `prefopt.run.steps.judge_ranks`; exercised by
`pytest tests/test_judge_ranks.py` (2 gloo processes on CPU: the shares equal one process's scores).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Optional, Sequence

from prefopt.errors import first_line
from prefopt.eval.judge import Judge, JudgeError, JudgeScores, Prompt
from prefopt.log import get_logger

log = get_logger()
STOP = "stop"


def share_of(n: int, rank: int, world: int) -> range:
    """The contiguous pairs rank `rank` of `world` scores: [rank·n // world, (rank + 1)·n // world)."""
    return range(rank * n // world, (rank + 1) * n // world)


@dataclass
class Channel:
    """Object messages between the ranks of a process group: rank 0 sends to all, gathers from all."""

    rank: int
    world: int
    group: Any = None

    def broadcast(self, message: Any) -> Any:
        """Rank 0's `message`, on every rank."""
        import torch.distributed as dist

        box = [message]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]

    def gather(self, message: Any) -> Optional[list[Any]]:
        """Every rank's `message` in rank order, on rank 0 (None on the others)."""
        import torch.distributed as dist

        out = [None] * self.world if self.rank == 0 else None
        dist.gather_object(message, out, dst=0, group=self.group)
        return out


def channel_for(strategy: Any, timeout_s: float) -> Optional[Channel]:
    """A `Channel` over all ranks of a data-parallel run (a gloo group of its own, `timeout_s`), else
    None (one process, or no process group). A collective: every rank of the run calls it."""
    import torch.distributed as dist
    from lightning.pytorch.strategies import ParallelStrategy

    world = int(getattr(strategy, "world_size", 1) or 1)
    if world < 2 or not isinstance(strategy, ParallelStrategy) or not dist.is_available() or not dist.is_initialized():
        return None
    group = dist.new_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
    return Channel(rank=dist.get_rank(), world=dist.get_world_size(), group=group)


def own_share(judge: Judge, prompts: Sequence[Prompt], responses: Sequence[str], rank: int, world: int) -> Any:
    """This rank's share scored by `judge`: ("scores", JudgeScores), or ("error", kind, one line)."""
    mine = share_of(len(prompts), rank, world)
    try:
        return "scores", (judge.score([prompts[i] for i in mine], [responses[i] for i in mine]) if len(mine)
                          else JudgeScores([]))
    except Exception as err:  # noqa: BLE001 - sent to rank 0, which raises it for the run
        return "error", "judge" if isinstance(err, JudgeError) else type(err).__name__, first_line(err)


def merged(shares: list[Any], n: int) -> JudgeScores:
    """The ranks' shares as one `JudgeScores` in order; the first rank's error raised."""
    for rank, share in enumerate(shares):
        if share[0] == "error":
            _, kind, message = share
            if kind == "judge":
                raise JudgeError(message)
            raise RuntimeError(f"the judge failed on data-parallel rank {rank}: {kind}: {message}")
    rewards = [r for _, scores in shares for r in scores.rewards]
    if len(rewards) != n:
        raise JudgeError(f"the data-parallel ranks' judges gave {len(rewards)} scores for {n} answers")
    return JudgeScores(rewards, sum(scores.truncated for _, scores in shares))


class SharedJudge(Judge):
    """Rank 0's judge whose scoring the data-parallel ranks share (see the module docstring)."""

    def __init__(self, judge: Judge, channel: Channel) -> None:
        self.inner, self.channel, self.broken = judge, channel, False
        self.name = judge.name
        self.shares = [0] * channel.world  # the pairs each rank has scored (results.json info.judge_shares)

    def describe(self) -> str:
        return self.inner.describe()

    def fingerprint(self) -> Any:
        return self.inner.fingerprint()

    def close(self) -> None:
        self.inner.close()

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> JudgeScores:
        prompts, responses = list(prompts), list(responses)
        if not self.broken:
            try:
                self.channel.broadcast(("score", prompts, responses))
                share = own_share(self.inner, prompts, responses, 0, self.channel.world)
                shares = self.channel.gather(share)
            except RuntimeError as err:  # a rank gone, or past eval.share_timeout_s: score here, alone
                self.broken = True
                log.warning(f"judge: the data-parallel ranks do not answer ({first_line(err)}); rank 0 scores the "
                            "answers alone")
            else:
                out = merged(shares, len(prompts))
                for rank in range(self.channel.world):
                    self.shares[rank] += len(share_of(len(prompts), rank, self.channel.world))
                return out
        return self.inner.score(prompts, responses)

    def stop(self) -> None:
        """Tell the other ranks to stop serving (once; nothing when the messages are broken)."""
        if not self.broken:
            self.broken = True
            try:
                self.channel.broadcast((STOP,))
            except RuntimeError as err:
                log.warning(f"judge: could not tell the data-parallel ranks to stop: {first_line(err)}")


class JudgeRanks:
    """A run's judge and its data-parallel ranks: `judge` (rank 0's, shared when there are ranks to share
    with), `serve()` on the other ranks; as a context manager on rank 0, its exit releases them."""

    def __init__(self, judge: Optional[Judge], channel: Optional[Channel] = None) -> None:
        self.channel = channel if judge is not None else None
        self.plain = judge
        self.judge = SharedJudge(judge, channel) if judge is not None and channel is not None else judge

    def serve(self) -> int:
        """Ranks > 0: score shares of rank 0's requests until it says stop; returns how many it scored."""
        if self.channel is None:
            return 0
        served = 0
        while True:
            try:
                request = self.channel.broadcast(None)
                if request[0] == STOP:
                    break
                _, prompts, responses = request
                self.channel.gather(own_share(self.plain, prompts, responses, self.channel.rank, self.channel.world))
                served += 1
            except RuntimeError as err:  # rank 0 gone, or past eval.share_timeout_s: stop, without failing
                log.warning(f"judge: rank {self.channel.rank} stops serving: {first_line(err)}")
                break
        self.plain.close()
        return served

    def __enter__(self) -> Optional[Judge]:
        return self.judge

    def __exit__(self, *exc: Any) -> bool:
        if isinstance(self.judge, SharedJudge):
            self.judge.stop()
        return False
