"""Preference losses: the interface (`PreferenceLoss`, `PairLogps`, `LossOutput`) and one class per loss.

There is no registry: a config names a class by `_target_` (e.g. `prefopt.losses.DPOLoss`) and its
keys are the constructor arguments. Add a loss by subclassing `PreferenceLoss` in a new file.
Exercised by: `.venv/bin/python -m pytest tests/losses -q`.
"""

from prefopt.losses.base import ConfigError, LossOutput, PairLogps, PreferenceLoss
from prefopt.losses.betadpo import BetaDPOLoss
from prefopt.losses.controls import RMiPOShuffledLoss, SimPOAnnealedLoss
from prefopt.losses.cpo import CPOLoss
from prefopt.losses.dpo import DPOLoss
from prefopt.losses.ipo import IPOLoss
from prefopt.losses.orpo import ORPOLoss
from prefopt.losses.rdpo import RDPOLoss
from prefopt.losses.rmipo import RMiPOLoss
from prefopt.losses.simper import SimPERLoss
from prefopt.losses.simpo import SimPOLoss

__all__ = [
    "BetaDPOLoss",
    "CPOLoss",
    "ConfigError",
    "DPOLoss",
    "IPOLoss",
    "LossOutput",
    "ORPOLoss",
    "PairLogps",
    "PreferenceLoss",
    "RDPOLoss",
    "RMiPOLoss",
    "RMiPOShuffledLoss",
    "SimPERLoss",
    "SimPOAnnealedLoss",
    "SimPOLoss",
]
