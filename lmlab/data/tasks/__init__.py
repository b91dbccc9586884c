"""Synthetic tasks generated on the fly from a seeded generator: addition, induction, trigram, max/sort."""

from lmlab.data.tasks.addition import AdditionTask
from lmlab.data.tasks.addition_cot import AdditionCoTTask
from lmlab.data.tasks.induction import InductionTask, induction_batch
from lmlab.data.tasks.maxsort import MaxSortTask
from lmlab.data.tasks.trigram import TrigramTask

TASKS = {
    "addition": AdditionTask,
    "addition-cot": AdditionCoTTask,
    "induction": InductionTask,
    "trigram": TrigramTask,
    "maxsort": MaxSortTask,
}

__all__ = [
    "TASKS",
    "AdditionCoTTask",
    "AdditionTask",
    "InductionTask",
    "MaxSortTask",
    "TrigramTask",
    "induction_batch",
]
