"""Training stage: ``train(cfg, bundle, run_dir, build_fn)`` with the ``fit`` or ``tape`` engine."""

from tfcnn.train.core import TrainResult, train
from tfcnn.train.stopping import PatienceRule, PlateauRule, StopRules, TargetLossRule

__all__ = ["PatienceRule", "PlateauRule", "StopRules", "TargetLossRule", "TrainResult", "train"]
