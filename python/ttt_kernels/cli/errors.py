"""The one exception type the command line turns into a message on stderr and a non-zero exit."""


class CLIError(Exception):
    """A problem with the user's input or environment: printed as ``ttt-kernels: error: <message>``, exit 2."""
