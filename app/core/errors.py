"""The service's refusals: exceptions whose messages are fit to show to the user (the API maps each to a status)."""

from __future__ import annotations

from collections.abc import Sequence

#: At most this many row errors are spelled out in one message.
MAX_REPORTED_ERRORS = 20


class ServiceError(Exception):
    """Base class of the service's refusals."""


class NotFoundError(ServiceError):
    """The named facility or observation does not exist."""


class ConflictError(ServiceError):
    """The thing to create exists already."""


class InvalidInputError(ServiceError, ValueError):
    """Input is well-formed transport-wise but its content is invalid."""


class ImportValidationError(InvalidInputError):
    """Some import rows are invalid; nothing was imported. ``errors`` names each bad row."""

    def __init__(self, errors: Sequence[str], total: int) -> None:
        self.errors = list(errors)
        shown = "; ".join(self.errors[:MAX_REPORTED_ERRORS])
        more = len(self.errors) - MAX_REPORTED_ERRORS
        suffix = f"; and {more} more" if more > 0 else ""
        noun = "row is" if len(self.errors) == 1 else "rows are"
        super().__init__(f"{len(self.errors)} of {total} {noun} invalid; nothing was imported: {shown}{suffix}")


class IdempotencyConflictError(InvalidInputError):
    """An ``Idempotency-Key`` was used again with a different upload."""


class ModelUnavailableError(ServiceError):
    """No detector is loaded in this process."""


class DatabaseBusyError(ServiceError):
    """Another writer held the database's write lock for longer than this one could wait; ``retry_after_s``
    suggests when to retry (nothing was stored)."""

    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s
