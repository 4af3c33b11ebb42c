"""The exceptions of the lensd client.

Everything the client raises about talking to lensd is a :class:`LensdException`::

    LensdException                 anything about talking to lensd
    ├── LensdError                 lensd answered with a non-2xx status
    │   ├── BadRequest             400 bad_request
    │   ├── Unauthorized           401 unauthorized
    │   ├── ...                    one class per code of ERRORS, below
    │   └── InsufficientStorage    507 insufficient_storage
    └── LensdTransportError        no answer came
        ├── LensdConnectionError   could not connect, or the connection broke
        │                          (also a requests.ConnectionError and a ConnectionError)
        └── LensdTimeout           no answer within the client's timeout
                                   (also a requests.Timeout and a TimeoutError)

``except lensd.LensdError`` catches exactly what it always caught: an answer
of the daemon, with ``.status`` and ``.code``; ``except lensd.LensdException``
catches that and a daemon that could not be reached. The transport errors are
also the requests exceptions that were raised before they existed, so code
that catches ``requests.ConnectionError`` or ``requests.Timeout`` keeps
working; the requests exception is their ``__cause__``.
"""

from __future__ import annotations

import math

import requests

# Every error lensd answers, as (HTTP status, error.code, class): the same
# rows in the same order as SRV_ERRORS in server/reply.h (the daemon's table,
# from which /openapi.json comes too); tests/integration/test_error_table.py
# checks that they agree. A status with two codes (409) is the first row's
# when a body does not say which.
ERRORS = [
    (400, "bad_request", "BadRequest"),
    (401, "unauthorized", "Unauthorized"),
    (403, "forbidden", "Forbidden"),
    (404, "not_found", "NotFound"),
    (405, "method_not_allowed", "MethodNotAllowed"),
    (406, "not_acceptable", "NotAcceptable"),
    (409, "conflict", "Conflict"),
    (409, "cancelled", "Cancelled"),
    (413, "too_large", "TooLarge"),
    (415, "unsupported_media_type", "UnsupportedMediaType"),
    (422, "unprocessable", "Unprocessable"),
    (429, "rate_limited", "RateLimited"),
    (499, "client_closed", "ClientClosed"),
    (500, "internal", "Internal"),
    (503, "unavailable", "Unavailable"),
    (507, "insufficient_storage", "InsufficientStorage"),
]


class LensdException(Exception):
    """The base of every exception the client raises about talking to lensd:
    an answer that is an error (:class:`LensdError`) or no answer at all
    (:class:`LensdTransportError`)."""


class LensdError(LensdException):
    """A non-2xx answer from lensd. Raised as the subclass of its code
    (:class:`NotFound`, :class:`RateLimited`, ...); an answer with a code
    that this client does not know is a plain LensdError.

    Attributes:
        status: the HTTP status (404, ...).
        code: lensd's error code (``"not_found"``, ...).
        message: lensd's explanation.
        field: the request field at fault, as a path (``"prompts[2]"``), or None.
        request_id: the response's ``X-Request-Id`` (also in the daemon's log), or None.
        retry_after: seconds from ``Retry-After`` (429, 503), or None.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        field: str | None = None,
        *,
        request_id: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(status, code, message, field)
        self.status = status
        self.code = code
        self.message = message
        self.field = field
        self.request_id = request_id
        self.retry_after = retry_after

    def __str__(self) -> str:
        text = f"{self.status} {self.code}: {self.message}"
        if self.field is not None:
            text += f" (field: {self.field})"
        return text

    @classmethod
    def from_response(cls, response: requests.Response) -> LensdError:
        """Builds the error that a non-2xx response stands for, as the class of its code.

        The body is expected to be ``{"error": {"code", "message", "field"}}``,
        and the class is its code's (:data:`ERRORS`). Anything else still gives
        an error: the code and class of the status (the first row with it), the
        body's text as the message; a status or a code that is not in the
        table gives a plain :class:`LensdError`. Whatever class it is called
        on, the class returned is the code's.
        """
        status = response.status_code
        code = _CODE_OF_STATUS.get(status, "error")
        message = response.text.strip()[:500] or response.reason or ""
        field = None
        try:
            error = response.json()["error"]
            code = str(error.get("code", code))
            message = str(error.get("message", message))
            field = error.get("field")
        except (ValueError, KeyError, TypeError, AttributeError):
            pass
        return error_class(code)(
            status,
            code,
            message,
            None if field is None else str(field),
            request_id=response.headers.get("X-Request-Id"),
            retry_after=_seconds(response.headers.get("Retry-After")),
        )


class BadRequest(LensdError):
    """400 bad_request: the request is not one lensd can read (JSON, a field, framing)."""


class Unauthorized(LensdError):
    """401 unauthorized: no bearer token, or one that the daemon does not know."""


class Forbidden(LensdError):
    """403 forbidden: the token may not use this route (``read`` on ``/v1/admin/``)."""


class NotFound(LensdError):
    """404 not_found: no such model, route, kept cache or progress id."""


class MethodNotAllowed(LensdError):
    """405 method_not_allowed: the route exists, not with this method."""


class NotAcceptable(LensdError):
    """406 not_acceptable: the route cannot answer in the ``Accept``-ed media type."""


class Conflict(LensdError):
    """409 conflict: e.g. a progress id in use by a running sweep, a name in use."""


class Cancelled(LensdError):
    """409 cancelled: the sweep or generate was cancelled (``DELETE /v1/progress/{id}``)."""


class TooLarge(LensdError):
    """413 too_large: the request (its body, batch or answer) is over the daemon's limits."""


class UnsupportedMediaType(LensdError):
    """415 unsupported_media_type: the body is not JSON."""


class Unprocessable(LensdError):
    """422 unprocessable: valid JSON, impossible request (a layer out of range)."""


class RateLimited(LensdError):
    """429 rate_limited: too many wrong tokens from this address; ``retry_after`` says when."""


class ClientClosed(LensdError):
    """499 client_closed: the client went away (the daemon logs it; a client rarely sees it)."""


class Internal(LensdError):
    """500 internal: a failure inside the daemon (a device error)."""


class Unavailable(LensdError):
    """503 unavailable: the queue is full or the daemon is shutting down; ``retry_after`` says when."""


class InsufficientStorage(LensdError):
    """507 insufficient_storage: the device has not the memory for this request."""


class LensdTransportError(LensdException):
    """No answer came from lensd: the base of :class:`LensdConnectionError`
    and :class:`LensdTimeout`. The requests exception is ``__cause__``.

    Attributes:
        url: the URL asked for, or None.
    """

    def __init__(self, message: str, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url


class LensdConnectionError(LensdTransportError, requests.ConnectionError, ConnectionError):
    """lensd could not be reached (refused, unresolvable, TLS), or the
    connection broke before the whole answer came."""


class LensdTimeout(LensdTransportError, requests.Timeout, TimeoutError):
    """No answer within the client's ``timeout`` (connecting or reading)."""


_CODE_OF_STATUS: dict[int, str] = {}
for _status, _code, _ in ERRORS:
    _CODE_OF_STATUS.setdefault(_status, _code)
_CLASS_OF_CODE: dict[str, type[LensdError]] = {code: globals()[name] for _, code, name in ERRORS}
del _status, _code


def error_class(code: str) -> type[LensdError]:
    """The exception class of an error code (:data:`ERRORS`); LensdError for an unknown code."""
    return _CLASS_OF_CODE.get(code, LensdError)


def _seconds(value: str | None) -> float | None:
    """Retry-After as seconds; None when absent, negative, not finite or given as an HTTP date."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None
