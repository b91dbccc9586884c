"""Evaluation: perplexity, HellaSwag-style multiple-choice scoring (and HellaSwag's validation
file, downloaded once), bootstrap intervals."""

from lmlab.eval.bootstrap import bootstrap_ci, format_ci
from lmlab.eval.choice import ChoiceItem, ChoiceResult, read_hellaswag, score_choices
from lmlab.eval.hellaswag import hellaswag_path
from lmlab.eval.perplexity import PerplexityResult, perplexity, sliding_windows

__all__ = [
    "ChoiceItem",
    "ChoiceResult",
    "PerplexityResult",
    "bootstrap_ci",
    "format_ci",
    "hellaswag_path",
    "perplexity",
    "read_hellaswag",
    "score_choices",
    "sliding_windows",
]
