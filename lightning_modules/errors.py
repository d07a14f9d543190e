"""The one error a bad training start raises: the entry point prints it and exits non-zero."""


class ConfigError(ValueError):
    """A setting, path or file the run cannot use; the message names it and says what to do."""

    exit_code = 2
