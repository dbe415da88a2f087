"""Short error responses the router answers itself when an upstream fails."""

from __future__ import annotations

from dataclasses import dataclass

import httpx

__all__ = [
    "PAYLOAD_TOO_LARGE",
    "REQUEST_TIMEOUT",
    "BodyTooLargeError",
    "ClientTooSlowError",
    "ErrorReply",
    "classify",
    "error_kind",
    "is_unreachable",
]


class BodyTooLargeError(Exception):
    """The client sent more body than max_body_size allows (raised by the body streams)."""


class ClientTooSlowError(Exception):
    """The client let the write timeout pass without sending its next body chunk, or without
    taking the next response chunk: it must not hold an upstream connection any longer (the
    pool is shared by every canary user; nginx bounds the same with client_body_timeout and
    send_timeout)."""


@dataclass(frozen=True, slots=True)
class ErrorReply:
    status: int
    body: bytes

    def headers(self, extra: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        return [
            (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(self.body)).encode()),
            *extra,
        ]


BAD_GATEWAY = ErrorReply(502, b"Bad Gateway: the canary upstream could not be reached.\n")
#: It was reached, and its answer broke HTTP/1.1 (bad framing, a reset, a close unanswered).
INVALID_RESPONSE = ErrorReply(502, b"Bad Gateway: the canary upstream sent no valid response.\n")
GATEWAY_TIMEOUT = ErrorReply(504, b"Gateway Timeout: the canary upstream did not answer in time.\n")
PAYLOAD_TOO_LARGE = ErrorReply(413, b"Payload Too Large: the request body is over the limit.\n")
REQUEST_TIMEOUT = ErrorReply(408, b"Request Timeout: the request body did not arrive in time.\n")
UNAVAILABLE = ErrorReply(503, b"Service Unavailable: too many requests to the canary upstream.\n")


def classify(exc: BaseException) -> ErrorReply:
    """The reply for an upstream failure before its response started. Details go to the log,
    never to the client."""
    if isinstance(exc, httpx.PoolTimeout):
        return UNAVAILABLE
    if isinstance(exc, httpx.TimeoutException):
        return GATEWAY_TIMEOUT
    if is_unreachable(exc):
        return BAD_GATEWAY
    return INVALID_RESPONSE


def error_kind(exc: BaseException) -> str:
    """A metrics label: refused (never connected), timeout, pool, or protocol."""
    if isinstance(exc, httpx.PoolTimeout):
        return "pool"
    if isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout)):
        return "refused"
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    return "protocol"


def is_unreachable(exc: BaseException) -> bool:
    """True when the upstream never received the request, so serving stable instead is safe."""
    return isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout))
