"""The error the test session's network guard (``tests/conftest.py``) raises."""


class NetworkAccessError(RuntimeError):
    """Raised (and recorded) when code under test reaches for a non-loopback address."""
