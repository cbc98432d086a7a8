"""The one exception type that the command line turns into a one-line message."""


class SgddError(ValueError):
    """Bad input or an unusable environment, described in one line for the user."""
