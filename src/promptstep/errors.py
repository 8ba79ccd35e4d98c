"""The one exception type that the CLI turns into a single error line and exit code 2."""


class InputError(Exception):
    """Bad user input: a malformed file, a wrong config value, an unusable model.

    The message is one line that names the problem (and the file and line where there is one).
    """


class TrainingStopped(Exception):
    """Meta-training stopped early (repeated non-finite steps, a full disk); the last good checkpoint is kept."""
