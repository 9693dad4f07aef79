"""The error a user can fix: bad arguments, files or configuration. Its message names the
file, field or argument at fault; the command line prints it as one line and exits 2."""


class ConfigError(ValueError):
    pass
