"""prefopt: preference optimization experiments (DPO, IPO, SimPO, RMiPO) with Lightning and Hydra.

Entry point: `python src/run.py` (see README.md).
"""

__version__ = "0.1.0"
