"""The one exception tree of imagestudio.

Everything the service raises on purpose is an ``ImageStudioError``. Foreign exceptions
(``openai``, ``httpx``, Pillow, SQLAlchemy) are mapped into this tree at the boundary that
meets them, with ``raise Mapped(...) from exc`` so the cause is kept.

    ImageStudioError
    ├── InputError                  the user's input is wrong; not worth retrying
    │   ├── PayloadInvalid          a field of the submitted payload (HTTP 422)
    │   ├── JobConflict             a used job_id with a different payload (HTTP 409)
    │   ├── JobNotFound             no such job for this user (HTTP 404)
    │   ├── ApiKeyRequired          a retry of an ended job must bring the key again (HTTP 422)
    │   ├── UnsafeURL               a URL we refuse to fetch (scheme, private address)
    │   │   └── ApiBaseRefused      the job's api_base now leads to a refused address (fatal
    │   │                           for the job: every image would meet it)
    │   ├── SourceNotFound          the source image answered 4xx (404, 403, ...)
    │   ├── SourceTooLarge          the source exceeds the byte or pixel cap
    │   ├── BadImage                the bytes are not an image we can decode
    │   └── TooMuchInFlight         the user's jobs or images in flight are at their quota
    │                               (HTTP 429 with ``retry_after``)
    ├── SourceUnavailable           the source host failed or timed out (transient)
    ├── ProviderError               the image provider said no or failed
    │   ├── RateLimited             429 rate limit; ``retry_after`` seconds if the server said
    │   ├── ProviderTimeout         no answer in time; ``sent`` if the request may be billed
    │   │   └── ConnectionDropped   the connection broke after the request was sent (billed?)
    │   ├── ProviderUnavailable     5xx, connection refused or reset
    │   │   └── ProviderBusy        a 5xx that said when to come back (``retry_after``)
    │   ├── NoImageReturned         a 2xx answer without an image in it
    │   ├── ContentRejected         content policy refusal (permanent for the image)
    │   ├── ProviderBadRequest      the provider rejected the request (permanent)
    │   ├── AuthFailed              401/403: the key is wrong (fatal for the job)
    │   └── QuotaExhausted          429 ``insufficient_quota`` (fatal for the job)
    ├── OutboundLimit               an answer to our request broke a limit of security.http
    │   ├── AnswerTooLarge          over the byte cap (``limit`` bytes); callers map it
    │   └── DeadlineExceeded        not done within the total deadline (``seconds``)
    ├── StorageError                the result could not be written
    └── LeaseLost                   this worker no longer owns the task (fencing)

The retry policy (``policy.retry``) decides what each class means for an image and a job;
nothing above a provider adapter looks at an ``openai`` or ``httpx`` exception type.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from imagestudio.domain import LimitKind, RateInfo


def _rebuild(cls: type[ImageStudioError], args: tuple[Any, ...]) -> ImageStudioError:
    error = cls.__new__(cls, *args)
    error.args = args
    return error


class ImageStudioError(Exception):
    """Base of every error imagestudio raises on purpose.

    Every one pickles with its type, message and attributes (it crosses the boundary of the
    imaging worker processes), whatever its subclass's ``__init__`` takes.
    """

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __reduce__(self) -> tuple[Any, ...]:
        # Not ``cls(*args)``: subclasses take other arguments (``PayloadInvalid(field, msg)``).
        return (_rebuild, (type(self), self.args), self.__dict__)


class InputError(ImageStudioError):
    """The input is wrong; retrying the same input cannot help."""


class PayloadInvalid(InputError):
    """A field of a submitted payload is invalid; ``field`` is its dotted path."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


class JobConflict(InputError):
    """A ``job_id`` already used by this user with a different payload."""


class JobNotFound(InputError):
    """No job with that id belongs to this user."""


class ApiKeyRequired(InputError):
    """The job's API key was erased when it ended; the caller must send it again."""


class UnsafeURL(InputError):
    """A URL we refuse to fetch: bad scheme, or a private/loopback/metadata address."""


class ApiBaseRefused(UnsafeURL):
    """The provider's ``api_base`` was refused when a call connected (it resolves to a
    private or loopback address now, as a rebinding name does): the whole job would meet it."""


class SourceNotFound(InputError):
    """The source image URL answered with a client error (404, 403, 410, ...)."""


class SourceTooLarge(InputError):
    """The source image is larger than the configured byte or pixel limit."""


class BadImage(InputError):
    """The bytes could not be decoded as a supported image."""


class TooMuchInFlight(InputError):
    """A submission refused because the user already has their quota of work in flight;
    ``retry_after`` is the suggested wait in seconds."""

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class SourceUnavailable(ImageStudioError):
    """The source host failed, timed out or answered 5xx; worth retrying."""


class ProviderError(ImageStudioError):
    """The image provider failed; ``status_code`` is the HTTP status when there was one."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.status_code = status_code


class RateLimited(ProviderError):
    """429 rate limit. ``retry_after`` is the wait in seconds the server asked for, if any."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        status_code: int | None = 429,
        rate: RateInfo | None = None,
        limit: LimitKind | None = None,
    ) -> None:
        super().__init__(message, status_code=status_code)
        self.retry_after = retry_after
        self.rate = rate
        self.limit = limit  # which limit the provider said was hit, when it said


class ProviderTimeout(ProviderError):
    """No answer in time. ``sent`` is True when the request may have reached the provider."""

    def __init__(self, message: str, *, sent: bool = True) -> None:
        super().__init__(message)
        self.sent = sent


class ConnectionDropped(ProviderTimeout):
    """The connection broke after the request was sent (mid-answer, or before any answer).

    Like a timeout after sending, the provider may have done (and billed) the work: it is a
    ``ProviderTimeout`` with ``sent=True``, so the retry policy bounds it with billed timeouts.
    """


class ProviderUnavailable(ProviderError):
    """5xx, or the connection was refused or reset."""


class ProviderBusy(ProviderUnavailable):
    """A 5xx (502, 503) that said when to come back: ``retry_after`` seconds."""

    def __init__(
        self, message: str, *, retry_after: float = 0.0, status_code: int | None = None
    ) -> None:
        super().__init__(message, status_code=status_code)
        self.retry_after = retry_after


class NoImageReturned(ProviderError):
    """The provider answered 2xx without an image in the answer."""


class ContentRejected(ProviderError):
    """The provider refused the content (safety/content policy)."""


class ProviderBadRequest(ProviderError):
    """The provider rejected the request as malformed or unsupported."""


class AuthFailed(ProviderError):
    """The API key was rejected (401/403)."""


class QuotaExhausted(ProviderError):
    """The account has no quota or credit left (429 ``insufficient_quota``)."""


class OutboundLimit(ImageStudioError):
    """An answer to one of our outbound requests broke a limit of the guarded HTTP path.

    Raised by ``security.http``; each caller maps it to what it means there (a source too
    large, a provider answer without a usable image, a provider timeout).
    """


class AnswerTooLarge(OutboundLimit):
    """The answer was larger than the request's byte cap (declared or counted on the stream)."""

    def __init__(self, message: str, *, limit: int) -> None:
        super().__init__(message)
        self.limit = limit


class DeadlineExceeded(OutboundLimit):
    """The request (connect, send, answer and body) did not finish within ``seconds``."""

    def __init__(self, message: str, *, seconds: float) -> None:
        super().__init__(message)
        self.seconds = seconds


class StorageError(ImageStudioError):
    """A result could not be written to or read from storage."""


class LeaseLost(ImageStudioError):
    """The worker's lease on a task expired or was taken over by a newer attempt."""
