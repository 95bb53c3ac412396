"""Exceptions a user can act on. Messages name the file or input and say what to do."""


class LabelRegError(ValueError):
    """Bad input, model or configuration; the message is meant for the user."""


class RegistrationCancelled(RuntimeError):
    """Raised when a caller's ``cancel()`` callback asked the engine to stop."""
