"""The one base class for errors a user can fix: the CLI prints them as one line."""


class BittuneError(ValueError):
    """Bad input or configuration, with a one-line message naming the problem."""
