"""The exception raised for every non-2xx answer from lensd."""

from __future__ import annotations

import requests

# docs/API.md, "Errors": the code that goes with each status. Used when a
# non-2xx body is not lensd's JSON error (e.g. an HTTP library's own page).
_CODE_OF_STATUS = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "too_large",
    415: "unsupported_media_type",
    422: "unprocessable",
    429: "rate_limited",
    500: "internal",
    503: "unavailable",
    507: "insufficient_storage",
}


class LensdError(Exception):
    """A non-2xx answer from lensd.

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
        """Builds the error that a non-2xx response stands for.

        The body is expected to be ``{"error": {"code", "message", "field"}}``;
        anything else still gives an error, with the code that docs/API.md
        pairs with the status and the body's text as the message.
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
        return cls(
            status,
            code,
            message,
            None if field is None else str(field),
            request_id=response.headers.get("X-Request-Id"),
            retry_after=_seconds(response.headers.get("Retry-After")),
        )


def _seconds(value: str | None) -> float | None:
    """Retry-After as seconds; None when absent or given as an HTTP date."""
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None
