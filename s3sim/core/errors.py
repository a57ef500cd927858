"""One exception type for every user-facing mistake, so entry points can print one line, not a traceback."""


class ConfigError(ValueError):
    """Bad input: an unknown name, an out-of-range value, a malformed file. The message names the field
    (or file and line) and says what would be valid."""


class InvariantViolation(RuntimeError):
    """A checked invariant of the serving model broke (capacity, exactly-once finish, token conservation).
    This is a bug in a policy or engine, never a user error; the message names the request and the time."""
