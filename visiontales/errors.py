"""The one exception type that reaches the user as a single line instead of a traceback."""


class VisionTalesError(Exception):
    """A user-facing problem (bad input file, missing weights, wrong option).

    The message must name the file, key or value at fault; the CLI prints it as one line
    (`error: <message>`) and exits with status 2.
    """
