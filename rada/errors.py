"""Exceptions with a user-facing meaning (the CLI maps :class:`InputError` to exit code 2)."""


class InputError(ValueError):
    """Bad input from the user: the message is one line that says what is wrong and where."""


class CancelledError(RuntimeError):
    """A long-running job was cancelled by the user."""
