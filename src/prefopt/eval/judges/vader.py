"""VADER, a lexicon-and-rules sentiment judge: an independent second judge for the IMDb task, offline.

VADER (Hutto & Gilbert 2014, "VADER: A Parsimonious Rule-based Model for Sentiment Analysis of Social
Media Text", ICWSM; PyPI `vadersentiment==3.3.2`, whose lexicon ships inside the wheel) sums the
valences of the words it knows (`great` +3.1, `terrible` -2.1, ...), adjusted by rules (negation
multiplies by -0.74, "!" adds 0.292 each, boosters, "but", capitals), and maps the sum x to its
*compound* score x / sqrt(x² + 15), in [-1, 1]. The reward here is that compound score of the answer
text alone (`include_prompt=false`, the default: the prompt is the same for both policies, so only what
each policy wrote decides the win), or of prompt + answer (`include_prompt=true`, the frame the IMDb
oracle's classifier scores). It shares nothing with the IMDb oracle (a TF-IDF + logistic-regression
classifier trained on the task's reviews), so a study's verdicts that hold under both do not come
from that classifier's quirks. It needs no model download and no GPU; a chat prompt is read as its
messages' contents joined by newlines. Metrics: eval/judge_* (prefopt.eval.judged).

Built from `conf/judge/vader.yaml` (`judge=vader`); exercised by `pytest tests/test_judge_vader.py`.
"""

from __future__ import annotations

from typing import Any, Sequence

from prefopt.eval.judge import Judge, JudgeError, JudgeScores, Prompt

VERSION = "3.3.2"  # the pinned vadersentiment (pyproject.toml): its lexicon is part of the fingerprint


def prompt_words(prompt: Prompt) -> str:
    """The prompt's text: a string as it is, a chat prompt's message contents joined by newlines."""
    return prompt if isinstance(prompt, str) else "\n".join(m.get("content", "") for m in prompt)


class VaderJudge(Judge):
    """VADER's compound sentiment score of each answer (see the module docstring)."""

    name = "vader"

    def __init__(self, include_prompt: bool = False) -> None:
        if not isinstance(include_prompt, bool):
            raise ValueError(f"include_prompt={include_prompt!r} is not allowed; it must be true or false")
        self.include_prompt = include_prompt
        self._analyzer: Any = None

    def describe(self) -> str:
        return f"vader (compound sentiment of the {'prompt + answer' if self.include_prompt else 'answer'})"

    def analyzer(self) -> Any:
        if self._analyzer is None:
            try:
                from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
            except ImportError:
                raise JudgeError(f"judge=vader needs the vadersentiment package: pip install "
                                 f"vadersentiment=={VERSION}") from None
            self._analyzer = SentimentIntensityAnalyzer()
        return self._analyzer

    def check(self) -> None:
        self.analyzer()  # the package and its lexicon, before training

    def fingerprint(self) -> Any:
        from importlib.metadata import PackageNotFoundError, version

        try:
            installed = version("vadersentiment")
        except PackageNotFoundError:
            installed = "unknown"
        return {"judge": self.name, "vadersentiment": installed, "include_prompt": self.include_prompt}

    def text(self, prompt: Prompt, response: str) -> str:
        return prompt_words(prompt) + response if self.include_prompt else response

    def score(self, prompts: Sequence[Prompt], responses: Sequence[str]) -> JudgeScores:
        vader = self.analyzer()
        return JudgeScores([float(vader.polarity_scores(self.text(p, r))["compound"])
                            for p, r in zip(prompts, responses)])

    def close(self) -> None:
        self._analyzer = None
