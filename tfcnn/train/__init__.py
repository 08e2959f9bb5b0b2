"""Training stage: ``train(cfg, bundle, run, build)`` with the ``fit`` or ``tape`` engine, and
``train_model(model, train_ds, ...)``, the tape engine for any Keras model and tf.data dataset.

Importing it registers the "train" check of :func:`tfcnn.config.validate`
(:func:`tfcnn.train.checks.check_train_config`).
"""

from tfcnn import config as _config
from tfcnn.train.api import TrainedModel, train_model
from tfcnn.train.checks import check_train_config
from tfcnn.train.core import TrainResult, train
from tfcnn.train.stopping import PatienceRule, PlateauRule, StopRules, TargetLossRule

_config.register_check("train", check_train_config)

__all__ = [
    "PatienceRule",
    "PlateauRule",
    "StopRules",
    "TargetLossRule",
    "TrainResult",
    "TrainedModel",
    "check_train_config",
    "train",
    "train_model",
]
