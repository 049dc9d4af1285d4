"""The one exception type that reaches the user as a single line instead of a traceback."""


class VisionTalesError(Exception):
    """A user-facing problem (bad input file, missing weights, wrong option).

    The message must name the file, key or value at fault; the CLI prints it as one line
    (`error: <message>`) and exits with status 2.
    """


class UnreadableItem(VisionTalesError):
    """An item's file could not be read although the data check passed it (it changed since); the
    data modules skip such an item and report it (`data_modules.common.SkippingDataset`)."""
