"""The errors a user can cause: each message says what was wrong (with the value) and the fix.

Every user-facing failure is an `LmlabError`; the CLI prints it as one `error: ...` line and exits
non-zero, the API raises it unchanged. Subclasses keep a built-in base (ValueError, KeyError,
FileNotFoundError, FileExistsError, RuntimeError) so existing `except` clauses keep working.
"""

from __future__ import annotations


class LmlabError(Exception):
    """Something the user can fix: a bad value, a missing or damaged file, a refused overwrite."""

    def __str__(self) -> str:  # KeyError subclasses would quote the message
        return str(self.args[0]) if self.args else self.__class__.__name__


class InputError(LmlabError, ValueError):
    """A value given to a function or flag is out of range or of the wrong kind."""


class MissingFileError(LmlabError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class OverwriteError(LmlabError, FileExistsError):
    """Writing would replace or delete something the user owns; the message says how to proceed."""


class CheckpointError(LmlabError, ValueError):
    """A checkpoint is missing, damaged or does not match the run that wants it."""


class DataError(LmlabError, ValueError):
    """Input data cannot be read or would give an empty split; names the file and line."""


class DeviceError(LmlabError, ValueError):
    """The requested device or CPU feature is not available here."""
