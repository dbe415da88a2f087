"""The admin HTTP API: the CLI's operations as JSON endpoints, behind a bearer token.

Mount it in your app (``app.mount("/canary-admin", admin_app(store, token=...))``) or serve
it alone with ``canary-mw admin``. The OpenAPI document is at ``/openapi.json``.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

try:  # Starlette is the 'admin' extra: nothing else in canary_mw needs it
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse, Response
    from starlette.routing import Route
except ModuleNotFoundError as exc:  # pragma: no cover - tested in a subprocess
    raise ModuleNotFoundError(
        "canary_mw's admin app needs Starlette: pip install 'canary-mw[admin]'", name=exc.name
    ) from exc

from ..decide import NO_OVERRIDES, Overrides
from ..errors import ConfigurationError, RuleError, StoreError
from ..ipmatch import parse_ip, parse_network
from ..keys import SetRef
from ..stores import Change, Store, store_from_url
from ..upstreams import parse_upstreams
from . import render
from .console import console_routes
from .explain import RequestDescription, explain_request
from .openapi import OPENAPI
from .rollout_api import rollout_routes

__all__ = ["admin_app"]

#: Largest request body accepted, in bytes (bulk user imports: chunk them).
MAX_BODY = 1 << 20

Handler = Callable[[Request, dict[str, Any]], Awaitable[Response]]


class InvalidBodyError(Exception):
    """A request body that does not validate: 422 with the field it is about."""

    def __init__(self, location: list[str | int], message: str):
        super().__init__(message)
        self.location = location
        self.message = message


def _error(status: int, detail: Any, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=dict(headers or {}))


def _invalid(location: list[str | int], message: str) -> JSONResponse:
    return _error(422, [{"loc": location, "msg": message}])


def _change(change: Change) -> JSONResponse:
    return JSONResponse({
        "version": change.version, "changed": change.changed, "action": change.action,
        "target": change.target, "count": change.count, "before": change.before,
        "after": change.after,
    })  # fmt: skip


def _field(
    body: Mapping[str, Any], name: str, kind: type | tuple[type, ...], *, required: bool = True
) -> Any:
    if name not in body:
        if required:
            raise InvalidBodyError(["body", name], "field required")
        return None
    value = body[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        expected = " or ".join(k.__name__ for k in kinds)
        raise InvalidBodyError(["body", name], f"expected {expected}, got {type(value).__name__}")
    return value


def _only(body: Mapping[str, Any], *allowed: str) -> None:
    for name in body:
        if name not in allowed:
            raise InvalidBodyError(["body", name], f"unexpected field; allowed: {list(allowed)}")


def _not_json(request: Request) -> Response | None:
    """415 unless the body is declared JSON. An HTML form, or a cross-site ``fetch`` that is
    to skip the CORS preflight, can only send text/plain, urlencoded or multipart bodies; a
    JSON one needs a preflight, which this API never approves."""
    declared = request.headers.get("content-type", "")
    if declared.partition(";")[0].strip().lower() == "application/json":
        return None
    return _error(
        415, f"send the body as JSON with Content-Type: application/json, not {declared!r}"
    )


def _loopback_authority(authority: str) -> bool:
    """``localhost``, ``127.0.0.0/8`` or ``[::1]``, with or without a port."""
    text = authority.strip().lower()
    if text.startswith("["):
        name, bracket, port = text[1:].partition("]")
        if not bracket or (port and not port.startswith(":")):
            return False
        port = port[1:]
    else:
        name, colon, port = text.partition(":")
        if colon and not port:
            return False
    if port and not port.isdigit():
        return False
    if name == "localhost":
        return True
    address = parse_ip(name)
    return address is not None and address.is_loopback


def _loopback_origin(origin: str) -> bool:
    scheme, separator, authority = origin.strip().partition("://")
    return (
        scheme.lower() in ("http", "https")
        and bool(separator)
        and "/" not in authority
        and _loopback_authority(authority)
    )


class AdminAPI:
    def __init__(
        self,
        store: Store,
        *,
        tokens: Mapping[str, str],
        allow_unauthenticated: bool,
        max_body: int,
        upstreams: Mapping[str, str] | None = None,
        overrides: Overrides = NO_OVERRIDES,
    ):
        self.store = store
        self.upstreams = dict(upstreams or {})
        self.overrides = overrides
        self.tokens = {name: secret.encode() for name, secret in tokens.items()}
        self.allow_unauthenticated = allow_unauthenticated
        self.max_body = max_body

    # -- the envelope every endpoint shares ---------------------------------------------
    def endpoint(
        self, handler: Handler, *, body: bool = False
    ) -> Callable[[Request], Awaitable[Response]]:
        async def run(request: Request) -> Response:
            actor = self._authenticate(request)
            if isinstance(actor, Response):
                return actor
            if body:
                refused = _not_json(request)
                if refused is not None:
                    return refused
            payload: dict[str, Any] = {"actor": actor}
            if body:
                parsed = await self._body(request)
                if isinstance(parsed, Response):
                    return parsed
                payload["body"] = parsed
            try:
                return await handler(request, payload)
            except InvalidBodyError as exc:
                return _invalid(exc.location, exc.message)
            except RuleError as exc:
                location: list[str | int] = ["body"]
                if exc.rule:
                    location += ["rules", exc.rule]
                if exc.field:
                    location += exc.field.replace("[", ".").replace("]", "").split(".")
                return _invalid(location, str(exc))
            except ConfigurationError as exc:
                return _invalid(["body"], str(exc))
            except StoreError as exc:
                return _error(503, f"store unavailable: {exc}")

        return run

    def _authenticate(self, request: Request) -> str | Response:
        client = request.client.host if request.client else "unknown"
        if not self.tokens:  # explicitly allowed, and then only from this machine
            address = parse_ip(client)
            if address is None or not address.is_loopback:
                return _error(403, "this admin API runs without authentication: loopback only")
            # A loopback peer is not enough: a web page the operator opens can make the browser
            # send requests here, cross-site (its Origin) or after pointing its own name at
            # 127.0.0.1 (DNS rebinding: the Host is still its name). Without a token, only
            # requests that name this machine on both counts are programs run on it.
            host = request.headers.get("host", "")
            if not _loopback_authority(host):
                return _error(
                    403,
                    f"this admin API runs without authentication and answers only requests "
                    f"for a loopback host (localhost, 127.0.0.1, [::1]), not Host {host!r}",
                )
            origin = request.headers.get("origin")
            if origin is not None and not _loopback_origin(origin):
                return _error(
                    403,
                    "this admin API runs without authentication and refuses requests from web "
                    f"pages (Origin {origin!r}); run it with a token to use it from a browser",
                )
            return f"api@{client}"
        header = request.headers.get("authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented:
            return _error(401, "missing bearer token", {"WWW-Authenticate": "Bearer"})
        for name, secret in self.tokens.items():
            if hmac.compare_digest(presented.strip().encode(), secret):
                return f"api:{name}@{client}"
        return _error(403, "invalid token")

    async def _body(self, request: Request) -> dict[str, Any] | Response:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.max_body:
            return _error(413, f"request body over {self.max_body} bytes")
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > self.max_body:
                return _error(413, f"request body over {self.max_body} bytes")
        try:
            parsed = json.loads(raw)
        except ValueError as exc:
            return _error(400, f"the body is not valid JSON: {exc}")
        except RecursionError:
            # json raises this, not ValueError, for arrays or objects nested about a thousand
            # deep; no valid body nests more than a few dozen levels.
            return _error(400, "the body is not acceptable JSON: nested too deeply")
        if not isinstance(parsed, dict):
            return _invalid(["body"], "expected a JSON object")
        return parsed

    async def call(self, function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return await run_in_threadpool(function, *args, **kwargs)

    # -- endpoints -----------------------------------------------------------------------
    async def status(self, request: Request, p: dict[str, Any]) -> Response:
        return JSONResponse(await self.call(render.status_data, self.store))

    async def get_mode(self, request: Request, p: dict[str, Any]) -> Response:
        config = await self.call(self.store.get_config)
        return JSONResponse({"mode": config.mode or "rules", "version": config.version})

    async def put_mode(self, request: Request, p: dict[str, Any]) -> Response:
        body = p["body"]
        _only(body, "mode")
        mode = _field(body, "mode", str)
        if mode not in ("off", "rules", "all"):
            raise InvalidBodyError(["body", "mode"], "expected one of off, rules, all")
        return _change(await self.call(self.store.set_mode, mode, actor=p["actor"]))

    async def get_rules(self, request: Request, p: dict[str, Any]) -> Response:
        data = await self.call(render.status_data, self.store)
        return JSONResponse({"source": data["rules_source"], "rules": data["rules"]})

    async def put_rules(self, request: Request, p: dict[str, Any]) -> Response:
        body = p["body"]
        _only(body, "rules")
        _field(body, "rules", list)
        return _change(await self.call(self.store.set_rules, body, actor=p["actor"]))

    async def post_rule(self, request: Request, p: dict[str, Any]) -> Response:
        body = p["body"]
        _only(body, "rule", "position")
        rule = _field(body, "rule", dict)
        position = _field(body, "position", int, required=False)
        change = await self.call(self.store.add_rule, rule, position=position, actor=p["actor"])
        return _change(change)

    async def get_rule(self, request: Request, p: dict[str, Any]) -> Response:
        rule_id = request.path_params["rule_id"]
        data = await self.call(render.status_data, self.store)
        for rule in data["rules"]:
            if rule["id"] == rule_id:
                return JSONResponse(rule)
        return _error(404, f"no rule with id {rule_id!r}")

    async def delete_rule(self, request: Request, p: dict[str, Any]) -> Response:
        rule_id = request.path_params["rule_id"]
        return _change(await self.call(self.store.remove_rule, rule_id, actor=p["actor"]))

    async def get_set(self, request: Request, p: dict[str, Any]) -> Response:
        name = request.path_params["name"]
        size = (await self.call(self.store.set_sizes, [name]))[name]
        member = request.query_params.get("member")
        if member is not None:  # one question, whatever the set's size
            found = await self.call(_membership, self.store, name, member, size <= 10_000)
            return JSONResponse(found)
        members = sorted(await self.call(self.store.members, name)) if size <= 10_000 else None
        return JSONResponse({"name": name, "size": size, "members": members})

    async def change_set(self, request: Request, p: dict[str, Any]) -> Response:
        name, action = request.path_params["name"], request.path_params["action"]
        if action not in ("add", "remove"):
            return _error(404, "use /sets/{name}/add or /sets/{name}/remove")
        body = p["body"]
        _only(body, "members", "ip")
        members = _field(body, "members", list)
        for index, member in enumerate(members):
            if not isinstance(member, str) or not member:
                raise InvalidBodyError(["body", "members", index], "expected a non-empty string")
        as_ip = _field(body, "ip", bool, required=False)
        functions = {
            (True, "add"): self.store.add_ips, (True, "remove"): self.store.remove_ips,
            (False, "add"): self.store.add_members, (False, "remove"): self.store.remove_members,
        }  # fmt: skip
        function = functions[bool(as_ip), action]
        return _change(await self.call(function, name, members, actor=p["actor"]))

    async def put_percent(self, request: Request, p: dict[str, Any]) -> Response:
        body = p["body"]
        _only(body, "percent", "rule", "by", "salt", "target")
        percent = _field(body, "percent", (int, float))
        options = {key: _field(body, key, str, required=False) for key in ("by", "salt")}
        options = {key: value for key, value in options.items() if value is not None}
        for key, name in (("rule", "rule_id"), ("target", "target")):
            value = _field(body, key, str, required=False)
            if value is not None:
                options[name] = value
        change = await self.call(self.store.set_percent, percent, actor=p["actor"], **options)
        return _change(change)

    async def get_upstreams(self, request: Request, p: dict[str, Any]) -> Response:
        config = await self.call(self.store.get_config)
        return JSONResponse(config.describe()["upstreams"] or {})

    async def put_upstream(self, request: Request, p: dict[str, Any]) -> Response:
        body = p["body"]
        _only(body, "url", "host")
        url = _field(body, "url", str)
        host = _field(body, "host", str, required=False)
        name = request.path_params["name"]
        change = await self.call(self.store.set_upstream, name, url, host=host, actor=p["actor"])
        return _change(change)

    async def delete_upstream(self, request: Request, p: dict[str, Any]) -> Response:
        name, host = request.path_params["name"], request.query_params.get("host")
        change = await self.call(self.store.remove_upstream, name, host=host, actor=p["actor"])
        return _change(change)

    async def get_mirror(self, request: Request, p: dict[str, Any]) -> Response:
        config = await self.call(self.store.get_config)
        return JSONResponse({"mirror": config.describe().get("mirror")})

    async def put_mirror(self, request: Request, p: dict[str, Any]) -> Response:
        return _change(await self.call(self.store.set_mirror, p["body"], actor=p["actor"]))

    async def delete_mirror(self, request: Request, p: dict[str, Any]) -> Response:
        return _change(await self.call(self.store.clear_mirror, actor=p["actor"]))

    async def mirror_report(self, request: Request, p: dict[str, Any]) -> Response:
        from ..shadow.report import parse_samples, report_rows  # noqa: PLC0415

        counts, samples = await self.call(self.store.shadow_report)
        return JSONResponse({"routes": report_rows(counts), "samples": parse_samples(samples)})

    async def history(self, request: Request, p: dict[str, Any]) -> Response:
        raw = request.query_params.get("limit", "20")
        if not raw.isdigit() or not 1 <= int(raw) <= 10_000:
            raise InvalidBodyError(["query", "limit"], "expected an integer from 1 to 10000")
        entries = await self.call(self.store.history, int(raw))
        return JSONResponse([entry.to_json() for entry in entries])

    async def rollback(self, request: Request, p: dict[str, Any]) -> Response:
        body = p["body"]
        _only(body, "version")
        version = _field(body, "version", int, required=False)
        return _change(await self.call(self.store.rollback, version, actor=p["actor"]))

    async def explain(self, request: Request, p: dict[str, Any]) -> Response:
        body = p["body"]
        _only(body, "ip", "host", "path", "method", "headers", "cookies")
        texts = {key: _field(body, key, str, required=False)
                 for key in ("ip", "host", "path", "method")}  # fmt: skip
        described: dict[str, Any] = {k: v for k, v in texts.items() if v is not None}
        for key in ("headers", "cookies"):
            pairs = _field(body, key, dict, required=False) or {}
            for name, value in pairs.items():
                if not isinstance(value, str):
                    raise InvalidBodyError(["body", key, name], "expected a string")
            described[key] = pairs
        try:
            description = RequestDescription(**described)
            description.facts()
        except ConfigurationError as exc:
            # The message opens with what it is about: "ip: ...", "host: ...", "header 'X' ...".
            about = {"ip": "ip", "path": "path", "host": "host", "cookies": "cookies",
                     "header": "headers"}.get(str(exc).replace(":", " ").split(" ")[0],
                                             "headers")  # fmt: skip
            raise InvalidBodyError(["body", about], str(exc)) from None
        explanation = await self.call(
            explain_request, self.store, description, overrides=self.overrides,
            upstreams=self.upstreams,
        )  # fmt: skip
        return JSONResponse(explanation.to_json())


def _membership(store: Store, name: str, member: str, scan: bool) -> dict[str, Any]:
    """Whether ``member`` is in the set as stored, and for an address, which of the set's
    addresses and networks hold it (an IP set matches by network, as the routers do; only
    ``scan``ned when the set is small enough to list)."""
    exact = store.lookup([(SetRef(name), member)], within_budget=False)[(SetRef(name), member)]
    matches = [member] if exact else []
    address = parse_ip(member)
    if address is not None and scan:
        for entry in sorted(store.members(name)):
            try:
                if entry != member and address in parse_network(entry, strict=False):
                    matches.append(entry)
            except ValueError:
                continue  # routers skip an invalid member too
    return {"name": name, "member": member, "contains": bool(matches), "matches": matches}


async def _openapi(request: Request) -> Response:
    return JSONResponse(OPENAPI)


def admin_app(
    store: str | Store,
    *,
    token: str | None = None,
    tokens: Mapping[str, str] | None = None,
    allow_unauthenticated: bool = False,
    max_body: int = MAX_BODY,
    upstreams: Mapping[str, str] | None = None,
    force_header: str | None = None,
    force_cookie: str | None = None,
) -> Starlette:
    """The admin API as an ASGI app.

    ``token`` (or ``tokens={"deploy-bot": "...", "alice": "..."}``, whose names the history
    records) is required. Without one it refuses to start, unless
    ``allow_unauthenticated=True``, and then it answers loopback clients only.
    ``upstreams``, ``force_header`` and ``force_cookie``: the routers' own options of those
    names (not in the store), so ``POST /explain`` resolves and decides as they do.
    """
    named = dict(tokens or {})
    if token is not None:
        named["api"] = token
    for name, secret in named.items():
        if not isinstance(secret, str) or len(secret) < 16:
            # Say which argument held it: "api" is only the name the history records for token=.
            where = "token=" if token is not None and secret is token else f"tokens[{name!r}]"
            raise ConfigurationError(
                f"{where} must be a string of at least 16 characters; make one with "
                "`openssl rand -hex 24`"
            )
    if not named and not allow_unauthenticated:
        raise ConfigurationError(
            "the admin API needs a token (token=... or CANARY_MW_ADMIN_TOKEN); to run it "
            "without one on loopback only, pass allow_unauthenticated=True "
            "(canary-mw admin --insecure-no-auth)"
        )
    if isinstance(store, str):
        store = store_from_url(store)
    elif not isinstance(store, Store):
        raise ConfigurationError("store must be a URL or a Store from store_from_url()")
    overrides = Overrides(header=force_header, cookie=force_cookie)
    parse_upstreams(None, dict(upstreams or {}))  # refused now, not at the first explain
    api = AdminAPI(
        store, tokens=named, allow_unauthenticated=allow_unauthenticated, max_body=max_body,
        upstreams=upstreams, overrides=overrides,
    )  # fmt: skip
    e = api.endpoint
    routes = [
        Route("/openapi.json", _openapi, methods=["GET"]),
        Route("/status", e(api.status), methods=["GET"]),
        Route("/mode", e(api.get_mode), methods=["GET"]),
        Route("/mode", e(api.put_mode, body=True), methods=["PUT"]),
        Route("/rules", e(api.get_rules), methods=["GET"]),
        Route("/rules", e(api.put_rules, body=True), methods=["PUT"]),
        Route("/rules", e(api.post_rule, body=True), methods=["POST"]),
        Route("/rules/{rule_id}", e(api.get_rule), methods=["GET"]),
        Route("/rules/{rule_id}", e(api.delete_rule), methods=["DELETE"]),
        Route("/sets/{name}", e(api.get_set), methods=["GET"]),
        Route("/sets/{name}/{action:str}", e(api.change_set, body=True), methods=["POST"]),
        Route("/percent", e(api.put_percent, body=True), methods=["PUT"]),
        Route("/upstreams", e(api.get_upstreams), methods=["GET"]),
        Route("/upstreams/{name}", e(api.put_upstream, body=True), methods=["PUT"]),
        Route("/upstreams/{name}", e(api.delete_upstream), methods=["DELETE"]),
        Route("/mirror", e(api.get_mirror), methods=["GET"]),
        Route("/mirror", e(api.put_mirror, body=True), methods=["PUT"]),
        Route("/mirror", e(api.delete_mirror), methods=["DELETE"]),
        Route("/mirror/report", e(api.mirror_report), methods=["GET"]),
        Route("/history", e(api.history), methods=["GET"]),
        Route("/rollback", e(api.rollback, body=True), methods=["POST"]),
        *rollout_routes(api),
        Route("/explain", e(api.explain, body=True), methods=["POST"]),
        *console_routes(),
    ]
    return Starlette(routes=routes)
