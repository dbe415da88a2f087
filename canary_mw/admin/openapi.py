"""The admin API's OpenAPI 3.1 document, written out so the contract is reviewed, not inferred."""
# ruff: noqa: E501 - a declarative document reads best with one path per line

from __future__ import annotations

from typing import Any

from ..version import __version__

__all__ = ["OPENAPI"]

_JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {_JSON: {"schema": schema}}}


def _ok(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {_JSON: {"schema": schema}}}


_ERRORS = {
    "401": {"description": "Missing bearer token", "content": {_JSON: {"schema": _ref("Error")}}},
    "403": {"description": "Wrong token; without auth, a Host or Origin that is not loopback",
            "content": {_JSON: {"schema": _ref("Error")}}},
    "503": {"description": "The store is unavailable", "content": {_JSON: {"schema": _ref("Error")}}},
}  # fmt: skip
_WRITE_ERRORS = {
    **_ERRORS,
    "400": {"description": "The body is not JSON, or is nested too deeply",
            "content": {_JSON: {"schema": _ref("Error")}}},
    "413": {"description": "Request body too large", "content": {_JSON: {"schema": _ref("Error")}}},
    "415": {"description": "The body is not Content-Type: application/json",
            "content": {_JSON: {"schema": _ref("Error")}}},
    "422": {"description": "Invalid body: the field is named in detail[].loc",
            "content": {_JSON: {"schema": _ref("ValidationError")}}},
}  # fmt: skip


#: The mirror document (docs/shadow.md), inline so the docs table can be checked field by field.
_MIRROR: dict[str, Any] = {
    "type": "object",
    "required": ["upstream"],
    "properties": {
        "upstream": {"type": "string", "format": "uri"},
        "when": {"type": "object"},
        "methods": {"type": "array", "items": {"type": "string"}, "default": ["GET", "HEAD"]},
        "percent": {"type": "number", "minimum": 0, "maximum": 100, "default": 100},
        "by": {"type": "string", "default": "ip"},
        "salt": {"type": "string", "default": "mirror"},
        "max_body": {"type": "integer", "minimum": 0, "default": 65536},
        "compare": {
            "type": "object",
            "properties": {
                "status": {"type": "boolean", "default": True},
                "headers": {"type": "array", "items": {"type": "string"}},
                "body": {"enum": ["json", "digest", "none"], "default": "digest"},
                "ignore": {"type": "array", "items": {"type": "string"}},
                "learn": {"type": "integer", "minimum": 0, "maximum": 1000, "default": 0},
            },
        },
        "queue": {"type": "integer", "minimum": 1, "default": 100},
        "concurrency": {"type": "integer", "minimum": 1, "default": 4},
    },
    "additionalProperties": False,
}


def _read(summary: str, schema: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"summary": summary, "responses": {"200": _ok(schema), **_ERRORS}, **extra}


def _write(summary: str, body: dict[str, Any] | None, **extra: Any) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "responses": {"200": _ok(_ref("Change"), "What the change did"), **_WRITE_ERRORS},
        **extra,
    }
    if body is not None:
        operation["requestBody"] = _body(body)
    return operation


def _object(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object", "properties": properties, "additionalProperties": False,
    }  # fmt: skip
    if required:
        schema["required"] = required
    return schema


_PATH = {"in": "path", "required": True, "schema": {"type": "string"}}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "canary_mw admin API",
        "version": __version__,
        "description": "Operate canary routing: every write is validated, atomic, recorded "
        "in the history and followed by every instance within a second.",
    },
    "security": [{"bearer": []}],
    "paths": {
        "/status": {"get": _read("Mode, rules, upstreams, health, set sizes, traffic", _ref("Status"))},
        "/mode": {
            "get": _read("The global mode", _object({"mode": _ref("Mode"), "version": {"type": "integer"}})),
            "put": _write("Set the mode (off: kill switch, all: everyone to the canary)",
                          _object({"mode": _ref("Mode")}, ["mode"])),
        },
        "/rules": {
            "get": _read("The rules in force", _object({
                "source": {"enum": ["store", "defaults"]},
                "rules": {"type": "array", "items": _ref("RuleSummary")}})),
            "put": _write("Replace the rule document (validated first)",
                          _object({"rules": {"type": "array", "items": _ref("Rule")}}, ["rules"])),
            "post": _write("Add one rule", _object(
                {"rule": _ref("Rule"), "position": {"type": "integer", "minimum": 0}}, ["rule"])),
        },
        "/rules/{rule_id}": {
            "parameters": [{"name": "rule_id", **_PATH}],
            "get": _read("One rule", _ref("RuleSummary")),
            "delete": _write("Remove one rule", None),
        },
        "/sets/{name}": {
            "parameters": [{"name": "name", **_PATH}],
            "get": _read("A set's size, and its members when there are at most 10,000; with ?member=X, whether X is in it",
                         {"oneOf": [
                             _object({"name": {"type": "string"}, "size": {"type": "integer"},
                                      "members": {"type": ["array", "null"], "items": {"type": "string"}}}),
                             _object({"name": {"type": "string"}, "member": {"type": "string"},
                                      "contains": {"type": "boolean"},
                                      "matches": {"type": "array", "items": {"type": "string"}, "description": "the member itself, and the set's networks holding an address"}})]},
                         parameters=[{"name": "member", "in": "query", "required": False,
                                      "schema": {"type": "string"}}]),
        },
        "/sets/{name}/{action}": {
            "parameters": [{"name": "name", **_PATH},
                           {"name": "action", "in": "path", "required": True,
                            "schema": {"enum": ["add", "remove"]}}],
            "post": _write("Add or remove members (ip: true validates addresses / CIDRs)",
                           _object({"members": {"type": "array", "items": {"type": "string"},
                                                "minItems": 1},
                                    "ip": {"type": "boolean"}}, ["members"])),
        },
        "/percent": {
            "put": _write("Set a sticky percentage (the rule is created if missing)", _object({
                "percent": {"type": "number", "minimum": 0, "maximum": 100},
                "rule": {"type": "string"}, "by": {"type": "string"},
                "salt": {"type": "string"}, "target": {"type": "string"}}, ["percent"])),
        },
        "/upstreams": {"get": _read("Upstream URLs set in the store", {"type": "object"})},
        "/upstreams/{name}": {
            "parameters": [{"name": "name", **_PATH}],
            "put": _write("Point an upstream name at a URL (optionally for one host)",
                          _object({"url": {"type": "string", "format": "uri"},
                                   "host": {"type": "string"}}, ["url"])),
            "delete": _write("Forget the store's URL for a name",
                             None, parameters=[{"name": "host", "in": "query", "required": False,
                                                "schema": {"type": "string"}}]),
        },
        "/mirror": {
            "get": _read("The mirror document in force (null: mirroring is off)", _object({"mirror": {"type": ["object", "null"]}})),
            "put": _write("Mirror stable requests to an upstream and compare the answers (docs/shadow.md)", _MIRROR),
            "delete": _write("Stop mirroring", None),
        },
        "/mirror/report": {
            "get": _read("Shadow copies per route, summed over every instance, and the latest differences",
                         _object({"routes": {"type": "array", "items": {"type": "object"}},
                                  "samples": {"type": "array", "items": {"type": "object"}}})),
        },
        "/history": {
            "get": _read("The latest changes, newest first",
                         {"type": "array", "items": _ref("AuditEntry")},
                         parameters=[{"name": "limit", "in": "query", "required": False,
                                      "schema": {"type": "integer", "minimum": 1,
                                                 "maximum": 10000, "default": 20}}]),
        },
        "/rollback": {
            "post": _write("Restore mode, rules and upstreams as they were after a version "
                           "(no version: undo the latest config change)",
                           _object({"version": {"type": ["integer", "null"], "minimum": 0}})),
        },
        "/rollout": {
            "get": _read("The latest rollout, and canary vs stable for its current step", _ref("RolloutStatus")),
            "post": {
                "summary": "Start a rollout (docs/rollouts.md): the first step at once, or at `at`",
                "requestBody": _body(_object({
                    "upstream": {"type": "string", "default": "canary"},
                    "by": {"type": "string", "default": "ip", "description": "ip, cookie:NAME, header:NAME or query:NAME"},
                    "steps": {"type": "array", "items": {"type": "number", "exclusiveMinimum": 0, "maximum": 100}, "default": [1, 5, 25, 50, 100]},
                    "hold": {"type": ["string", "number"], "default": "10m", "description": "seconds, or 30s / 10m / 2h"},
                    "max_error_rate_increase": {"type": ["string", "number"], "default": "0.5%", "description": "a fraction (0.005) or a percentage string (0.5%)"},
                    "max_p99_ratio": {"type": "number", "minimum": 1, "default": 1.3},
                    "min_requests": {"type": "integer", "minimum": 1, "default": 200},
                    "latency_slack": {"type": ["string", "number"], "default": "25ms", "description": "latency increase (median, p99) never judged a failure: seconds, or 25ms"},
                    "on_success": {"enum": ["promote", "hold"], "default": "promote"},
                    "confirm_url": {"type": ["string", "null"], "format": "uri"},
                    "notify_url": {"type": ["string", "null"], "format": "uri"},
                    "at": {"type": ["number", "null"], "description": "start time, seconds since the epoch"},
                    "interval": {"type": ["string", "number"], "default": "5s", "description": "telemetry window"}})),
                "responses": {"200": _ok(_ref("RolloutStatus")), **_WRITE_ERRORS},
            },
        },
        "/rollout/{command}": {
            "parameters": [{"name": "command", "in": "path", "required": True,
                            "schema": {"enum": ["pause", "resume", "abort", "promote"]}}],
            "post": _read("Pause, resume, abort (restores what was in force before) or promote the active rollout", _ref("RolloutStatus")),
        },
        "/explain": {
            "post": {
                "summary": "Where the routers would send a described request now, and why (writes nothing)",
                "requestBody": _body(_object({
                    "ip": {"type": "string", "description": "the client address, as the routers resolve it"},
                    "host": {"type": "string", "default": "localhost"},
                    "path": {"type": "string", "default": "/", "description": "with ?query if any"},
                    "method": {"type": "string", "default": "GET"},
                    "headers": {"type": "object", "additionalProperties": {"type": "string"}},
                    "cookies": {"type": "object", "additionalProperties": {"type": "string"}}})),
                "responses": {"200": _ok(_ref("Explanation")), **_WRITE_ERRORS},
            },
        },
    },
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {
            "Mode": {"enum": ["off", "rules", "all"]},
            "Rule": {"type": "object", "required": ["id", "when"], "properties": {
                "id": {"type": "string"}, "when": {"type": "object"},
                "target": {"type": "string", "default": "canary"},
                "enabled": {"type": "boolean", "default": True},
                "description": {"type": "string"}}},
            "RuleSummary": {"type": "object", "properties": {
                "id": {"type": "string"}, "when": {"type": "object"},
                "target": {"type": "string"}, "enabled": {"type": "boolean"},
                "description": {"type": "string", "description": "only when the rule has one"}}},
            "Change": {"type": "object", "properties": {
                "version": {"type": "integer"}, "changed": {"type": "boolean"},
                "action": {"type": "string"}, "target": {"type": ["string", "null"]},
                "count": {"type": "integer"}, "before": {}, "after": {}}},
            "AuditEntry": {"type": "object", "properties": {
                "id": {"type": "string"}, "version": {"type": "integer"},
                "time": {"type": "string"}, "actor": {"type": "string"},
                "action": {"type": "string"}, "target": {"type": ["string", "null"]},
                "before": {}, "after": {}, "detail": {}}},
            "Status": {"type": "object", "properties": {
                "store": {"type": "string"}, "prefix": {"type": "string"},
                "version": {"type": ["integer", "null"], "description": "null: the stored version is not an integer (see problems)"},
                "mode": {"type": "string", "description": "off, rules or all; anything else is what the store holds, with mode_valid false"},
                "mode_valid": {"type": "boolean"},
                "rules_source": {"enum": ["store", "defaults"]},
                "rules_problem": {"type": ["string", "null"]},
                "rules": {"type": "array", "items": _ref("RuleSummary")},
                "upstreams": {"type": "object"},
                "health": {"type": "object", "description": "per backend URL (every URL the store's upstreams resolve to, and every URL a router reported on)",
                           "additionalProperties": _ref("BackendHealth")},
                "ip_lists": {"type": "array", "items": {"type": "object", "properties": {
                    "key": {"type": "string"}, "db": {"type": "integer"},
                    "entries": {"type": "integer"}, "problem": {"type": ["string", "null"]}}}},
                "sets": {"type": "object", "additionalProperties": {"type": ["integer", "null"]}},
                "traffic": {"type": "object", "additionalProperties": {"type": "integer"}},
                "rollout": _ref("RolloutStatus"),
                "problems": {"type": "array", "description": "invalid data in the store: what, what is wrong, what routers keep in force, how to fix it",
                             "items": {"type": "object", "properties": {
                                 "what": {"type": "string"}, "problem": {"type": "string"},
                                 "in_force": {"type": "string"}, "fix": {"type": "string"}}}}}},
            "BackendHealth": {"type": "object", "required": ["state", "routes"], "properties": {
                "state": {"enum": ["healthy", "ejected", "lapsed", "not checked", "unreadable"], "description": "lapsed: no router renewed the record (it is ignored)"},
                "routes": {"type": "array", "items": {"type": "string"}, "description": "upstream names (name@host for a per-host URL) in the store that resolve to this URL"},
                "healthy": {"type": "boolean"}, "since": {"type": "number"},
                "until": {"type": ["number", "null"], "description": "the record is ignored after this time (null: never, a record written by hand)"},
                "reason": {"type": "string"}, "by": {"type": "string", "description": "host:pid of the router that wrote it"},
                "raw": {"type": "string", "description": "an unreadable record as stored"}}},
            "Explanation": {"type": "object", "properties": {
                "target": {"type": "string", "description": "stable or the upstream name that serves it"},
                "reason": {"type": "string", "description": "rule, no-match, unknown, mode-off, mode-all, override-header, override-cookie, no-upstream, ejected"},
                "rule": {"type": ["string", "null"]},
                "upstream": {"type": ["string", "null"], "description": "the URL it is forwarded to; null: served by the app itself"},
                "ruled": {"type": "object", "description": "what the rules chose, before resolving the upstream"},
                "mode": _ref("Mode"), "version": {"type": "integer"},
                "overrides": {"type": "array", "items": {"type": "string"}},
                "rules": {"type": "array", "items": {"type": "object", "properties": {
                    "id": {"type": "string"}, "target": {"type": "string"},
                    "outcome": {"enum": ["matched", "no match", "unknown", "disabled", "not reached"]},
                    "condition": {"oneOf": [{"type": "null"}, _ref("ConditionTrace")]}}}}}},
            "ConditionTrace": {"type": "object", "properties": {
                "condition": {"type": "object"}, "value": {"enum": ["true", "false", "unknown"]},
                "why": {"type": "string"},
                "children": {"type": "array", "items": _ref("ConditionTrace")}}},
            "RolloutStatus": {"type": "object", "properties": {
                "changed": {"type": "boolean", "description": "in answers to POST"},
                "action": {"type": "string", "description": "in answers to POST"},
                "rollout": {"type": ["object", "null"], "description": "the record: plan, status (scheduled, running, waiting, paused, succeeded, promoted, rolled_back, aborted), step (from 0), percent, verdict, reason, prior, generation"},
                "windows": {"type": "object", "description": "per target (the upstream and stable): requests, errors, buckets, error_rate, p99 for the current step, over every instance",
                            "additionalProperties": {"type": "object"}},
                "baseline": {"enum": ["step", "rollout"], "description": "where stable's window comes from: the step, or (when stable served too few in it, as at 100 %) since the rollout began"}}},
            "Error": {"type": "object", "properties": {"detail": {"type": "string"}}},
            "ValidationError": {"type": "object", "properties": {"detail": {
                "type": "array", "items": {"type": "object", "properties": {
                    "loc": {"type": "array", "items": {"type": ["string", "integer"]}},
                    "msg": {"type": "string"}}}}}},
        },
    },
}  # fmt: skip
