"""The base class of errors that are the user's to fix; the CLI prints their message without a traceback."""


class FdcoreError(Exception):
    """An error with a message that says what was wrong and what to do."""
