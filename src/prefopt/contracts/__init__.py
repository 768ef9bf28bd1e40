"""Contracts: the interfaces and small predicates the packages share, importing nothing from prefopt.

`task` — a preference-data source (`Task`), what it hands the run (`TaskArtifacts`), what it needs of
the starting policy (`StartNeeds`) and what the run starts from (`Start`); `layout` — how a pair batch is
laid out and scored (`Layout`, implemented in prefopt.scoring); `predicates` — `is_lora`,
`is_sharded`; `fingerprints` — `fingerprint` (of JSON-able parts) and `weights_fingerprint` (of a model).
Implementations import these from here (prefopt.tasks, prefopt.models, prefopt.scoring, prefopt.train, prefopt.store,
prefopt.eval, prefopt.data), so no package reaches into another's implementation for an interface; the
old paths (`prefopt.tasks.base`, `prefopt.models.choose`, `prefopt.models.setup`, `prefopt.train.gather`,
`prefopt.scoring.logp_cache`, `prefopt.store.cache`) still give the names tests and users import.
Exercised by `pytest tests/test_contracts.py`.
"""

from prefopt.contracts.fingerprints import fingerprint, weights_fingerprint
from prefopt.contracts.layout import Layout
from prefopt.contracts.predicates import is_lora, is_sharded
from prefopt.contracts.task import Oracle, Row, Start, StartNeeds, Task, TaskArtifacts

__all__ = ["Layout", "Oracle", "Row", "Start", "StartNeeds", "Task", "TaskArtifacts", "fingerprint", "is_lora", "is_sharded",
           "weights_fingerprint"]
