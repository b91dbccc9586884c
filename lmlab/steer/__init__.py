"""Activation engineering: steering vectors, ActAdd, optimized vectors, knowledge edits, ITI."""

from lmlab.steer.actadd import actadd
from lmlab.steer.steering_vector import Positions, SteeringHandle, SteeringVector, hook_for
from lmlab.steer.train import (
    AGGREGATORS,
    logistic_aggregator,
    mean_aggregator,
    pca_aggregator,
    train_steering_vector,
)

__all__ = [
    "AGGREGATORS",
    "Positions",
    "SteeringHandle",
    "SteeringVector",
    "actadd",
    "hook_for",
    "logistic_aggregator",
    "mean_aggregator",
    "pca_aggregator",
    "train_steering_vector",
]
