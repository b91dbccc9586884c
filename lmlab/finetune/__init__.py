"""Finetuning: sequence classification heads and supervised finetuning on chat data."""

from lmlab.finetune.classify import ClassifyConfig, SequenceClassifier, train_classifier
from lmlab.finetune.data import LabeledTexts, balance, load_labeled, split
from lmlab.finetune.metrics import classification_report, plot_confusion

__all__ = [
    "ClassifyConfig",
    "LabeledTexts",
    "SequenceClassifier",
    "balance",
    "classification_report",
    "load_labeled",
    "plot_confusion",
    "split",
    "train_classifier",
]
