"""The command line that runs a run again, ready to paste into a shell.

`rerun_command(overrides, settings)` is `python src/run.py` with the run's own command-line overrides
(less those it sets again) and `key=value` settings, each value written so that Hydra reads it back as
the same string (`hydra_value`: quoted when it holds a quote, a comma, `=`, brackets, ...) and each
argument quoted for the shell (`shlex.join`): a run folder with spaces or quotes in its name pastes as
it is. Used by the resume hints of prefopt.train.signals (an interrupted run) and prefopt.train.guards
(a diverged run). Exercised by `pytest tests/test_signals.py tests/test_guards.py`.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

PLAIN_VALUE = re.compile(r"[\w/.\-+@:%~]+( +[\w/.\-+@:%~]+)*")  # what Hydra reads back unquoted, as is


def hydra_value(value: Any) -> str:
    """`value` as an override's right-hand side that Hydra parses back to the same string: as it is
    when plain, else single-quoted (a quote escaped, and the backslashes before one or at the end doubled)."""
    text = str(value)
    if PLAIN_VALUE.fullmatch(text):
        return text
    escaped = re.sub(r"(\\*)('|$)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), text)
    return f"'{escaped}'"


def rerun_command(overrides: list[str], settings: dict[str, Any]) -> str:
    """`python src/run.py <overrides> <key=value ...>` for a shell; `settings` replace any override of the
    same key."""
    kept = [a for a in overrides if a.lstrip("+~").split("=", 1)[0] not in settings]
    extra = [f"{key}={hydra_value(value)}" for key, value in settings.items()]
    return shlex.join(["python", "src/run.py", *kept, *extra])
