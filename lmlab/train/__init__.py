"""Training from scratch: `TrainConfig`, `Trainer`, schedules, optimizers, checkpoints, DDP/FSDP2."""

from lmlab.train.config import TrainConfig
from lmlab.train.trainer import Trainer, TrainingError

__all__ = ["TrainConfig", "Trainer", "TrainingError"]
