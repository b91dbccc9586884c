"""The error every tokenizer module raises (kept apart so chat templates need not import `base`)."""

from __future__ import annotations

from lmlab.errors import LmlabError


class TokenizerError(LmlabError, ValueError):
    """A tokenizer file, name or vocabulary lmlab cannot use; the message says what and the fix."""
