"""The one exception type for errors a user can cause (config, paths, data).

The CLI prints it as a single line and exits with status 2; everything else is a bug and keeps its traceback.
"""


class MedjaxError(Exception):
    """A user-caused error whose message names the offending key, file or value."""
