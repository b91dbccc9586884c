"""Evaluation: perplexity over a text and HellaSwag-style multiple-choice scoring."""

from lmlab.eval.choice import ChoiceItem, ChoiceResult, read_hellaswag, score_choices
from lmlab.eval.perplexity import PerplexityResult, perplexity, sliding_windows

__all__ = [
    "ChoiceItem",
    "ChoiceResult",
    "PerplexityResult",
    "perplexity",
    "read_hellaswag",
    "score_choices",
    "sliding_windows",
]
