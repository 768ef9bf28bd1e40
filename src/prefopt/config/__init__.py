"""Configuration: what a run may ask for, checked before anything heavy loads.

Here: the schema of the plain config groups (`schema`) and the check of a composed config against it
and the constructors (`validate`), building `_target_` components with their keys checked
(`components`), the Hydra launcher resolvers and SLURM precheck (`launcher`), and the checks run first
in a job: output folder and cache (`preflight`), and the run plan: `prefopt.config.plan(cfg)` returns a
frozen `RunPlan` of the components a run is made of, each constructed once, and of its decisions made
once (the resume checkpoint and its pin, the batch layouts) (`run_plan`). A new plain config key goes in `schema.py`
and its yaml default in `conf/`; a component's keys are its constructor's arguments, so they need no
entry here. Exercised by `pytest tests/test_config.py tests/test_schema.py tests/test_validate.py
tests/test_launcher.py tests/test_preflight.py tests/test_plan.py`.
"""

from prefopt.config.run_plan import RunPlan, plan

__all__ = ["RunPlan", "plan"]
