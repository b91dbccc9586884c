"""The one training core: `TrainConfig`, `Trainer`, the `Task` a kind of training supplies
(`LMTask` for language modelling), the schedule, optimizers, checkpoints, DDP/FSDP2."""

from lmlab.train.config import TrainConfig
from lmlab.train.lm import LMTask
from lmlab.train.task import Task
from lmlab.train.trainer import Trainer, TrainingError

__all__ = ["LMTask", "Task", "TrainConfig", "Trainer", "TrainingError"]
