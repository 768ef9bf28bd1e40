"""Preference-data sources: embedded tasks with an oracle (imdb, sort) and user files.

Every source is a `Task` (see base.py) named by `data.source._target_` in conf/data/*.yaml.
"""

from prefopt.contracts.task import StartNeeds, Task, TaskArtifacts

__all__ = ["StartNeeds", "Task", "TaskArtifacts"]
