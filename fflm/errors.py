"""Errors and warnings that fflm raises on purpose.

Every problem with the user's input becomes an FflmError with a one-line message;
the CLI prints it and exits non-zero, so a traceback always means a bug in fflm.
"""


class FflmError(Exception):
    """A problem with the user's input or files, explained in one line."""


class FflmWarning(UserWarning):
    """Something worth telling the user that does not stop the work."""
