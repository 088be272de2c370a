"""Exceptions with messages a user can act on.

Every exception the project raises derives from `FeedbackgenError`. `DataError` and `ConfigError`
are also `ValueError`s (scikit-learn's `NotFittedError` pattern), so code that catches a
`ValueError` around a value it was handed keeps working. `RecordProblem` is not: readers raise it
inside one record and catch it once per record, and a parser's own `except ValueError` must not
swallow it."""


class FeedbackgenError(Exception):
    """Base class: every error the command line turns into a one-line reason."""


class DataError(FeedbackgenError, ValueError):
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


class ConfigError(FeedbackgenError, ValueError):
    """A configuration value out of range or of the wrong type."""


class NotFittedError(FeedbackgenError):
    """A model used before `fit` (or `load`)."""


class RecordProblem(FeedbackgenError):
    """One record of an input file that cannot be read: `field` (None: the record as a whole) and
    `reason`. Raised and caught inside a reader, which reports the record and goes on."""

    def __init__(self, field: str | None, reason: str):
        super().__init__(reason)
        self.field, self.reason = field, reason


class FeedbackgenWarning(UserWarning):
    """Something ran, but not as asked or not well; the command line prints it as one
    `feedbackgen: warning: ...` line."""


class DecodingWarning(FeedbackgenWarning):
    """A decoding option beyond what the model can honour (it runs, but not as asked)."""


class CollapseWarning(FeedbackgenWarning):
    """A loaded text generator that answered every request alike when trained (`training.json`)."""
