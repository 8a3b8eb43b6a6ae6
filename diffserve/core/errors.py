"""The one error tree. Every dialect maps these to its own error shape in one place.

Nothing below the HTTP edge raises HTTPException; it raises one of these, and the dialect's
error mapper renders it. Messages are written for the client (vendor wording where the spec
gives it) and never contain a stack trace.
"""

from __future__ import annotations


MAX_MESSAGE_CHARS = 1000


class DiffserveError(Exception):
    """Base class: `message` is safe to show to the client."""

    http_status = 500

    def __init__(self, message: str) -> None:
        if len(message) > MAX_MESSAGE_CHARS:  # a message quoting a client's 10 MB string stays small
            message = message[:MAX_MESSAGE_CHARS] + "..."
        super().__init__(message)
        self.message = message


class InvalidInput(DiffserveError):
    """A request field is missing, of the wrong type, or out of range. `field` names it."""

    http_status = 400

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ImageInputError(InvalidInput):
    """An input image could not be fetched or decoded (bad URL, not an image, too large...)."""


class Unauthorized(DiffserveError):
    http_status = 401


class Forbidden(DiffserveError):
    http_status = 403


class NotFound(DiffserveError):
    http_status = 404


class ModelNotFound(InvalidInput):
    def __init__(self, model_id: str) -> None:
        super().__init__(f"Model not found: {model_id}", field="model_id")
        self.model_id = model_id


class RateLimited(DiffserveError):
    http_status = 429

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(DiffserveError):
    http_status = 503

    def __init__(self, message: str = "Service temporarily unavailable") -> None:
        super().__init__(message)


class GenerationFailed(DiffserveError):
    """The engine could not produce images for a job (recorded on the job, not raised at the edge)."""


CANCELLED_BY_CLIENT = "Cancelled by the client"


class Cancelled(DiffserveError):
    """A client cancelled the job: raised between denoising steps, the job ends `cancelled`."""

    def __init__(self, message: str = CANCELLED_BY_CLIENT) -> None:
        super().__init__(message)
