"""The one error type every weight reader raises: it names the file, what was wrong, and the fix."""

from __future__ import annotations

from lmlab.errors import LmlabError


class WeightsError(LmlabError, ValueError):
    """A weights file or folder lmlab cannot read; the message says which file, what and what to do."""
