"""The one exception type that stages, the CLI and the service turn into a clear message."""


class NriqaError(Exception):
    """A problem with the user's input or environment, stated so a person can act on it."""
