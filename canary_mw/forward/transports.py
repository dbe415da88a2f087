"""Other engines under the httpx API: swap them in with ``CanaryRouter(transport=...)``.

The router speaks httpx (what users and respx know); the transport is what moves bytes.
``bench/run.py`` measures httpx's own transport against these two; docs/forwarding.md says which
is the default and why. Both need an optional extra: ``canary-mw[aiohttp]`` or
``canary-mw[httpx2]``. Both map their errors to httpx's, so 502/503/504 and fallback work
the same whatever moves the bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx

from .client import DEFAULT_LIMITS

__all__ = ["AiohttpTransport", "HTTPCore2Transport"]


# -- httpx2's engine (httpcore2) ---------------------------------------------------------------
@contextlib.contextmanager
def _httpcore2_errors() -> Iterator[None]:
    import httpcore2  # noqa: PLC0415 - optional dependency

    try:
        yield
    except httpcore2.TimeoutException as exc:
        # httpcore2's exception names are httpx's: map by name, keeping the message.
        raise getattr(httpx, type(exc).__name__, httpx.TimeoutException)(str(exc)) from exc
    except (httpcore2.NetworkError, httpcore2.ProtocolError, httpcore2.ProxyError) as exc:
        raise getattr(httpx, type(exc).__name__, httpx.TransportError)(str(exc)) from exc


class _HTTPCore2Stream(httpx.AsyncByteStream):
    def __init__(self, stream: Any):
        self._stream = stream

    async def __aiter__(self) -> AsyncIterator[bytes]:
        with _httpcore2_errors():
            async for part in self._stream:
                yield part

    async def aclose(self) -> None:
        await self._stream.aclose()


class HTTPCore2Transport(httpx.AsyncBaseTransport):
    """httpx2's connection pool (httpcore2) under an httpx client."""

    def __init__(self, limits: httpx.Limits = DEFAULT_LIMITS):
        import httpcore2  # noqa: PLC0415 - optional dependency

        self._pool = httpcore2.AsyncConnectionPool(
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
        )
        self._httpcore2 = httpcore2

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        core = self._httpcore2
        url = core.URL(
            scheme=request.url.raw_scheme, host=request.url.raw_host,
            port=request.url.port, target=request.url.raw_path,
        )  # fmt: skip
        outgoing = core.Request(
            method=request.method, url=url, headers=request.headers.raw,
            content=request.stream, extensions=request.extensions,
        )  # fmt: skip
        with _httpcore2_errors():
            response = await self._pool.handle_async_request(outgoing)
        return httpx.Response(
            status_code=response.status, headers=response.headers,
            stream=_HTTPCore2Stream(response.stream), extensions=response.extensions,
        )  # fmt: skip

    async def aclose(self) -> None:
        await self._pool.aclose()


# -- aiohttp --------------------------------------------------------------------------------
class _AiohttpStream(httpx.AsyncByteStream):
    def __init__(self, response: Any):
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        import aiohttp  # noqa: PLC0415 - optional dependency

        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except asyncio.TimeoutError as exc:
            raise httpx.ReadTimeout(str(exc)) from exc
        except aiohttp.ClientError as exc:
            raise httpx.ReadError(str(exc)) from exc

    async def aclose(self) -> None:
        self._response.release()


class AiohttpTransport(httpx.AsyncBaseTransport):
    """aiohttp's client under an httpx client: no cookie jar, no decompression, no default
    headers, no redirects; one session per event loop, created on first use."""

    def __init__(self, limits: httpx.Limits = DEFAULT_LIMITS):
        self._limits = limits
        self._timeouts: dict[tuple[float | None, ...], Any] = {}
        self._session: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _session_for_loop(self) -> Any:
        import aiohttp  # noqa: PLC0415 - optional dependency

        loop = asyncio.get_running_loop()
        if self._session is None or self._loop is not loop:
            connector = aiohttp.TCPConnector(
                limit=self._limits.max_connections or 0,
                keepalive_timeout=self._limits.keepalive_expiry or 15,
                ttl_dns_cache=60,
            )
            self._session = aiohttp.ClientSession(
                connector=connector,
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
                trust_env=False,
            )
            self._loop = loop
        return self._session

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        import aiohttp  # noqa: PLC0415 - optional dependency
        import yarl  # noqa: PLC0415 - comes with aiohttp

        timeout = self._timeout(request.extensions.get("timeout", {}))
        # httpx frames every body it sends: Content-Length, or Transfer-Encoding: chunked.
        # aiohttp frames it again itself, and refuses a Transfer-Encoding header it did not set.
        chunked = request.headers.get("transfer-encoding") == "chunked"
        headers = [
            (k.decode("latin-1"), v.decode("latin-1"))
            for k, v in request.headers.raw
            if k.lower() != b"transfer-encoding"
        ]
        has_body = chunked or request.headers.get("content-length", "0") != "0"
        body = _aiter(request.stream) if has_body else None
        # encoded=True: the path and query go out byte for byte (yarl would re-quote them).
        url = yarl.URL(str(request.url), encoded=True)
        try:
            response = await self._session_for_loop().request(
                request.method, url, headers=headers, data=body,
                allow_redirects=False, timeout=timeout, compress=None,
            )  # fmt: skip
        except aiohttp.ClientConnectorError as exc:
            raise httpx.ConnectError(str(exc)) from exc
        except aiohttp.ServerTimeoutError as exc:
            raise httpx.ReadTimeout(str(exc)) from exc
        except asyncio.TimeoutError as exc:
            raise httpx.ConnectTimeout(str(exc)) from exc
        except aiohttp.ClientError as exc:
            raise httpx.RemoteProtocolError(str(exc)) from exc
        return httpx.Response(
            status_code=response.status,
            headers=list(response.raw_headers),
            stream=_AiohttpStream(response),
            extensions={"reason_phrase": (response.reason or "").encode("latin-1"),
                        "http_version": b"HTTP/1.1"},
        )  # fmt: skip

    def _timeout(self, timeouts: dict[str, float | None]) -> Any:
        """aiohttp's timeout object for httpx's timeout dict, built once per distinct dict."""
        import aiohttp  # noqa: PLC0415 - optional dependency

        key = (timeouts.get("connect"), timeouts.get("read"), timeouts.get("pool"))
        timeout = self._timeouts.get(key)
        if timeout is None:
            timeout = self._timeouts[key] = aiohttp.ClientTimeout(
                total=None, sock_connect=key[0], sock_read=key[1], connect=key[2]
            )
        return timeout

    async def aclose(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()


async def _aiter(stream: Any) -> AsyncIterator[bytes]:
    async for chunk in stream:
        yield chunk
