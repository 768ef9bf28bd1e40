"""prefopt.log: `[name] message` lines, INFO to stdout and WARNING up to stderr, PLAIN lines bare,
nothing from a rank other than 0, and PREFOPT_LOG_LEVEL read when the logger is first set up.

Run: `.venv/bin/python -m pytest tests/test_log.py -q` (about a second).
"""

import logging
import sys

import pytest
from lightning.fabric.utilities.rank_zero import rank_zero_only

from prefopt import log as prefopt_log
from prefopt.log import PLAIN, get_logger, is_rank_zero


@pytest.fixture(autouse=True)
def fresh_config(monkeypatch):
    """The `prefopt` logger as if no module had asked for it yet (PREFOPT_LOG_LEVEL unset unless a test
    sets it); the session's set-up is put back after."""
    monkeypatch.delenv("PREFOPT_LOG_LEVEL", raising=False)
    root = logging.getLogger(prefopt_log.ROOT)
    saved = (_consoles(root), root.level, root.propagate, getattr(root, "_prefopt_configured", False))
    for handler in saved[0]:  # pytest's own capture handlers, attached to non-propagating loggers, stay
        root.removeHandler(handler)
    root._prefopt_configured = False
    yield root
    for handler in _consoles(root):
        root.removeHandler(handler)
    for handler in saved[0]:
        root.addHandler(handler)
    root.setLevel(saved[1])
    root.propagate, root._prefopt_configured = saved[2], saved[3]


def _consoles(logger):
    return [h for h in logger.handlers if isinstance(h, prefopt_log._ConsoleHandler)]


def test_lines_are_prefixed_with_the_source_name(capsys):
    get_logger().info("data: %d pairs", 12)
    get_logger("sort").info("building the judge")
    assert capsys.readouterr().out == "[prefopt] data: 12 pairs\n[sort] building the judge\n"


def test_info_goes_to_stdout_and_warnings_and_errors_to_stderr(capsys):
    log = get_logger()
    log.info("progress")
    log.warning("cache: rebuilding kind/key")
    log.error("error: the run failed", extra=PLAIN)
    out, err = capsys.readouterr()
    assert out == "[prefopt] progress\n"
    assert err == "[prefopt] cache: rebuilding kind/key\nerror: the run failed\n"


def test_plain_lines_have_no_prefix_and_keep_their_layout(capsys):
    table = "method  reward\ndpo     0.712\nrmipo   0.734"
    get_logger().info(table, extra=PLAIN)
    assert capsys.readouterr().out == table + "\n"


def test_percent_signs_in_a_message_without_arguments_are_kept(capsys):
    get_logger().info("win rate 50% at step 3")  # no args: the message is not %-formatted
    assert capsys.readouterr().out == "[prefopt] win rate 50% at step 3\n"


def test_an_exception_logged_with_its_traceback(capsys):
    try:
        raise ValueError("bad row 7")
    except ValueError:
        get_logger().exception("building failed")
    err = capsys.readouterr().err
    assert err.startswith("[prefopt] building failed\nTraceback") and "ValueError: bad row 7" in err


def test_a_rank_other_than_zero_writes_nothing(capsys, monkeypatch):
    monkeypatch.setattr(rank_zero_only, "rank", 1)  # what Lightning records on a data-parallel worker
    assert not is_rank_zero()
    get_logger().info("progress")
    get_logger("sort").error("error: failed", extra=PLAIN)
    assert capsys.readouterr() == ("", "")
    monkeypatch.setattr(rank_zero_only, "rank", 0)
    get_logger().info("progress")
    assert capsys.readouterr().out == "[prefopt] progress\n"


def test_the_launchers_rank_counts_before_lightning_is_imported(capsys, monkeypatch):
    monkeypatch.delitem(sys.modules, "lightning.fabric.utilities.rank_zero")
    monkeypatch.setenv("RANK", "3")
    get_logger().info("progress")
    assert capsys.readouterr().out == ""
    monkeypatch.setenv("RANK", "0")
    get_logger().info("progress")
    assert capsys.readouterr().out == "[prefopt] progress\n"


@pytest.mark.parametrize("level, shown", [
    (None, ["[sort] progress", "[sort] a warning"]),  # unset: INFO
    ("WARNING", ["[sort] a warning"]),
    ("debug", ["[sort] a detail", "[sort] progress", "[sort] a warning"]),
])
def test_prefopt_log_level_sets_what_is_shown(capsys, monkeypatch, level, shown):
    if level is not None:
        monkeypatch.setenv("PREFOPT_LOG_LEVEL", level)
    log = get_logger("sort")  # a task's logger follows the level set on `prefopt`
    log.debug("a detail")
    log.info("progress")
    log.warning("a warning")
    out, err = capsys.readouterr()
    assert (out + err).splitlines() == shown


def test_an_unknown_log_level_is_named_and_info_is_used(capsys, monkeypatch):
    monkeypatch.setenv("PREFOPT_LOG_LEVEL", "verbose")
    get_logger().info("progress")
    out, err = capsys.readouterr()
    assert err == ("[prefopt] PREFOPT_LOG_LEVEL=verbose is not a level (DEBUG, INFO, WARNING, ERROR, CRITICAL): "
                   "using INFO\n")
    assert out == "[prefopt] progress\n"


def test_set_up_once_so_each_line_is_written_once(fresh_config, capsys):
    for _ in range(3):
        get_logger("sort")
    get_logger("sort").info("once")
    assert capsys.readouterr().out == "[sort] once\n" and len(_consoles(fresh_config)) == 1


def test_a_signal_handlers_line_skips_logging_and_falls_back_to_the_raw_descriptor(capfd, monkeypatch):
    from prefopt.train.signals import _say

    _say("[prefopt] SIGINT: stopping\n")
    assert capfd.readouterr().err == "[prefopt] SIGINT: stopping\n"

    class Interrupted:  # a buffered stream interrupted in the middle of its own write
        def write(self, text):
            raise RuntimeError("reentrant call inside <_io.BufferedWriter name='<stderr>'>")

    stderr, sys.stderr = sys.stderr, Interrupted()
    try:
        _say("[prefopt] SIGTERM: stopping\n")
    finally:
        sys.stderr = stderr
    assert capfd.readouterr().err == "[prefopt] SIGTERM: stopping\n"  # written to file descriptor 2 directly
    monkeypatch.setattr(rank_zero_only, "rank", 2)
    _say("[prefopt] SIGINT: stopping\n")
    assert capfd.readouterr().err == ""
