"""The one error the perflog tools raise for bad input, with a one-line message.

A path that does not exist, a folder without perflogs, an output folder that does not exist,
a malformed option value: the command line prints the message and exits with
:data:`EXIT_BAD_INPUT`.
"""

EXIT_BAD_INPUT = 2


class PerflogError(Exception):
    """Bad input to the perflog tools; the message names the file, option or key."""
