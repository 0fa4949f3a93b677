"""Errors that the tools report as one line (no traceback) and a non-zero exit."""


class UserError(Exception):
    """A mistake in what the user asked for (a path, an option, the environment)."""
