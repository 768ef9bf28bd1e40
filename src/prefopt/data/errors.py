"""The one error type the data layer raises for bad user data (unreadable files, malformed rows).

A `DataError` message always says where the problem is (file, split, row or line) and what to fix,
so a run fails at load time with a pointer instead of deep inside training.
Exercised by `pytest tests/data`.
"""

from __future__ import annotations


class DataError(ValueError):
    """Preference data that cannot be loaded or used as given."""
