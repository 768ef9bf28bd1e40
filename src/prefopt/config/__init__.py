"""Configuration: what a run is allowed to ask for, checked before anything loads.

Here: building `_target_` components against their constructors (`components`), the schema of the
plain groups and its check (`validate`), Hydra launcher resolvers and the SLURM precheck (`launcher`),
and the output-folder/disk preflight (`preflight`). The yaml itself lives in `conf/`.
"""
