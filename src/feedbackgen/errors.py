"""Exceptions with messages a user can act on."""


class FeedbackgenError(Exception):
    """Base class: every error the command line turns into a one-line reason."""


class DataError(FeedbackgenError):
    """Bad input data: names the file, the record (line), the field and what was expected."""

    def __init__(self, message: str, *, source: str | None = None, line: int | None = None,
                 field: str | None = None):
        where = ""
        if source is not None:
            where = f"{source}"
            if line is not None:
                where += f", line {line}"
            if field is not None:
                where += f", field {field!r}"
            where += ": "
        super().__init__(where + message)
        self.source, self.line, self.field, self.reason = source, line, field, message


class ConfigError(FeedbackgenError):
    """A configuration value out of range or of the wrong type."""


class NotFittedError(FeedbackgenError):
    """A model used before `fit` (or `load`)."""


class FeedbackgenWarning(UserWarning):
    """Something ran, but not as asked or not well; the command line prints it as one
    `feedbackgen: warning: ...` line."""


class DecodingWarning(FeedbackgenWarning):
    """A decoding option beyond what the model can honour (it runs, but not as asked)."""


class CollapseWarning(FeedbackgenWarning):
    """A loaded text generator that answered every request alike when trained (`training.json`)."""
