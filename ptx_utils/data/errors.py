"""The one exception type the data layer raises for bad input."""


class DataError(ValueError):
    """A dataset is missing, malformed or too small for what was asked.

    The message always says what was expected and what to do about it.
    """
