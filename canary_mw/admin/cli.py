"""``canary-mw``: operate canary_mw from a terminal or a deploy pipeline.

Every command talks to the store given by ``--store`` (or ``CANARY_MW_STORE``); every write
is validated first, applied atomically, recorded in the history with ``--actor`` (default
``user@host``) and followed by every running instance within a second.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Callable
from typing import Any, TextIO

import click

from ..errors import ConfigurationError
from ..rules import parse_rules
from ..stores import DEFAULT_ACTOR, Change, Store
from . import render
from .cli_context import Context, one_line_errors, pass_context
from .cli_context import report_change as _report
from .mirror_cli import mirror
from .rollout_cli import rollout

__all__ = ["main"]

DEFAULT_STORE = "redis://127.0.0.1:6379/0"


#: Targets every router knows: its own app, and ``canary_url``'s name.
KNOWN_TARGETS = frozenset({"stable", "canary"})


def _warn_unknown_targets(store: Store) -> None:
    """A rule whose target no router can resolve is served by stable, with a warning in each
    router's log at request time: say it once now, to the person who can fix it."""
    rules = store.get_rules()
    upstreams = store.get_config().describe()["upstreams"] or {}
    named = KNOWN_TARGETS | set(upstreams if isinstance(upstreams, dict) else ())
    for item in rules.rules if rules else ():
        if item.target not in named:
            click.echo(
                f"warning: rule {item.id!r} targets {item.target!r}, which no upstream in the "
                "store names; unless your routers' own upstreams= option names it, its "
                f"requests are served by stable. Add it with: canary-mw upstream set "
                f"{item.target} URL",
                err=True,
            )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--store", "url", envvar="CANARY_MW_STORE", default=DEFAULT_STORE,
              show_default=True, help="Store URL (env CANARY_MW_STORE); also accepted after "
              "the command.")  # fmt: skip
@click.option("--actor", envvar="CANARY_MW_ACTOR", default=DEFAULT_ACTOR, show_default=True,
              help="Who the history records for changes (env CANARY_MW_ACTOR).")  # fmt: skip
@click.pass_context
def main(ctx: click.Context, url: str, actor: str) -> None:
    """canary_mw: canary / gray-release routing inside Python web apps.

    \b
    Exit status: 0 done; 1 a value was refused or the store failed (one line on
    stderr, nothing written); 2 the command line is malformed (click's usage message).
    """
    ctx.obj = Context(url, actor)


# -- reading -----------------------------------------------------------------------------
@main.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def status(ctx: Context, as_json: bool) -> None:
    """Mode, rules, upstreams and their health, set sizes, traffic per version."""
    with one_line_errors():
        data = render.status_data(ctx.store)
    click.echo(json.dumps(data, indent=2) if as_json else "\n".join(render.status_lines(data)))


@main.command()
@click.option("--limit", default=20, show_default=True, help="How many changes, newest first.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def history(ctx: Context, limit: int, as_json: bool) -> None:
    """The latest changes: when, who, what, before and after."""
    with one_line_errors():
        entries = ctx.store.history(limit)
    if as_json:
        click.echo(json.dumps([entry.to_json() for entry in entries], indent=2))
    else:
        click.echo("\n".join(render.history_lines(entries)) or "(no changes recorded)")


@main.command()
@click.argument("version", type=int, required=False)
@pass_context
def rollback(ctx: Context, version: int | None) -> None:
    """Restore mode, rules and upstreams as they were after VERSION (default: undo the latest
    config change). Set memberships are left as they are."""
    with one_line_errors():
        _report(ctx.store.rollback(version, actor=ctx.actor), "rollback")


@main.command()
@click.argument("mode", type=click.Choice(["off", "rules", "all"]))
@pass_context
def mode(ctx: Context, mode: str) -> None:
    """off: everyone stable (kill switch); rules: normal; all: everyone to the canary."""
    with one_line_errors():
        _report(ctx.store.set_mode(mode, actor=ctx.actor), "set")


def _pairs(values: tuple[str, ...], separator: str, what: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        name, found, rest = value.partition(separator)
        if not found or not name.strip():
            raise ConfigurationError(f"{what} {value!r}: expected NAME{separator}VALUE")
        pairs[name.strip()] = rest.strip()
    return pairs


@main.command()
@click.option("--ip", default=None, help="The client address, as the routers resolve it.")
@click.option("--host", default="localhost", show_default=True, help="The Host header.")
@click.option("--path", default="/", show_default=True, help="The path, with ?query if any.")
@click.option("--method", default="GET", show_default=True, help="The HTTP method.")
@click.option("--header", "headers", multiple=True, help="'Name: value' (repeatable).")
@click.option("--cookie", "cookies", multiple=True, help="NAME=VALUE (repeatable).")
@click.option(
    "--upstream",
    "upstreams",
    multiple=True,
    help="NAME=URL: a router's own upstream (canary_url=, upstreams=), repeatable.",
)
@click.option("--force-header", default=None, help="The routers' force_header, if set.")
@click.option("--force-cookie", default=None, help="The routers' force_cookie, if set.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@pass_context
def explain(ctx: Context, ip: str | None, host: str, path: str, method: str,
            headers: tuple[str, ...], cookies: tuple[str, ...], upstreams: tuple[str, ...],
            force_header: str | None, force_cookie: str | None, as_json: bool) -> None:  # fmt: skip
    """Where the routers would send this request now, and why: each rule in order with each
    condition's value, the rule that decides, the upstream URL."""
    from ..decide import Overrides  # noqa: PLC0415 - only this command needs them
    from .explain import RequestDescription, explain_lines, explain_request  # noqa: PLC0415

    with one_line_errors():
        request = RequestDescription(
            ip=ip, host=host, path=path, method=method, headers=_pairs(headers, ":", "--header"),
            cookies=_pairs(cookies, "=", "--cookie"),
        )  # fmt: skip
        explanation = explain_request(
            ctx.store, request, overrides=Overrides(header=force_header, cookie=force_cookie),
            upstreams=_pairs(upstreams, "=", "--upstream"),
        )  # fmt: skip
    if as_json:
        click.echo(json.dumps(explanation.to_json(), indent=2))
    else:
        click.echo("\n".join(explain_lines(explanation, request)))


# -- sets of IPs and users -----------------------------------------------------------------
def _read_values(values: tuple[str, ...], source: TextIO | None) -> list[str]:
    collected = list(values)
    if source is not None:
        collected += [line.strip() for line in source if line.strip() and not line.startswith("#")]
    return collected


def _set_commands(kind: str, default_set: str, add: Callable[..., Change],
                  remove: Callable[..., Change]) -> click.Group:  # fmt: skip
    @click.group(name=kind, help=f"The {kind} set(s) rules refer to (default set {default_set!r}).")
    def group() -> None:
        pass

    set_option = click.option(
        "--set", "set_name", default=default_set, show_default=True, help="Name of the set."
    )
    file_option = click.option(
        "--file", "source", type=click.File("r"),
        help="Also read one value per line from a file ('-': stdin).",
    )  # fmt: skip

    @group.command("add")
    @set_option
    @file_option
    @click.argument("values", nargs=-1)
    @pass_context
    def add_command(
        ctx: Context, set_name: str, source: TextIO | None, values: tuple[str, ...]
    ) -> None:
        with one_line_errors():
            change = add(ctx.store, set_name, _read_values(values, source), actor=ctx.actor)
            _report(change, f"{kind} add to {set_name!r}")

    @group.command("remove")
    @set_option
    @file_option
    @click.argument("values", nargs=-1)
    @pass_context
    def remove_command(
        ctx: Context, set_name: str, source: TextIO | None, values: tuple[str, ...]
    ) -> None:
        with one_line_errors():
            change = remove(ctx.store, set_name, _read_values(values, source), actor=ctx.actor)
            _report(change, f"{kind} remove from {set_name!r}")

    @group.command("list")
    @set_option
    @pass_context
    def list_command(ctx: Context, set_name: str) -> None:
        with one_line_errors():
            for member in sorted(ctx.store.members(set_name)):
                click.echo(member)

    return group


main.add_command(_set_commands("ip", "ips", Store.add_ips, Store.remove_ips))
main.add_command(_set_commands("user", "users", Store.add_members, Store.remove_members))


# -- rules ---------------------------------------------------------------------------------
@main.group()
def rule() -> None:
    """One rule at a time (see docs/rules.md for conditions)."""


@rule.command("add")
@click.option("--id", "rule_id", required=True, help="Unique rule id.")
@click.option("--when", required=True, help='Condition as JSON, e.g. \'{"ip": ["10.0.0.0/8"]}\'.')
@click.option("--target", default="canary", show_default=True, help="'stable' or an upstream.")
@click.option("--position", type=int, help="Insert at this position (0: first); default last.")
@click.option("--description", default=None, help="Free text.")
@click.option("--disabled", is_flag=True, help="Store the rule switched off.")
@pass_context
def rule_add(ctx: Context, rule_id: str, when: str, target: str, position: int | None,
             description: str | None, disabled: bool) -> None:  # fmt: skip
    """Add a rule (the stored rules, or the defaults if none are stored, plus this one)."""
    with one_line_errors():
        try:
            condition = json.loads(when)
        except ValueError as exc:
            raise ConfigurationError(
                f"--when is not JSON ({exc}); quote it for the shell, e.g. "
                """--when '{"ip": ["10.0.0.0/8"]}'"""
            ) from None
        spec: dict[str, Any] = {"id": rule_id, "when": condition, "target": target}
        if description:
            spec["description"] = description
        if disabled:
            spec["enabled"] = False
        _report(
            ctx.store.add_rule(spec, position=position, actor=ctx.actor), f"rule add {rule_id!r}"
        )
        _warn_unknown_targets(ctx.store)


@rule.command("remove")
@click.argument("rule_id")
@pass_context
def rule_remove(ctx: Context, rule_id: str) -> None:
    """Remove a rule by id."""
    with one_line_errors():
        _report(ctx.store.remove_rule(rule_id, actor=ctx.actor), f"rule remove {rule_id!r}")


@rule.command("list")
@pass_context
def rule_list(ctx: Context) -> None:
    """The rules in force, in order."""
    with one_line_errors():
        data = render.status_data(ctx.store)
    for position, item in enumerate(data["rules"], 1):
        click.echo(f"{position}. {item['id']} -> {item['target']}: {json.dumps(item['when'])}")


@rule.command("show")
@click.argument("rule_id")
@pass_context
def rule_show(ctx: Context, rule_id: str) -> None:
    """One rule as JSON."""
    with one_line_errors():
        ruleset = ctx.store.get_rules()
        from ..rules import DEFAULT_RULES  # noqa: PLC0415 - only for this fallback

        for item in (ruleset or DEFAULT_RULES).rules:
            if item.id == rule_id:
                click.echo(json.dumps(item.spec, indent=2))
                return
    click.echo(f"error: no rule with id {rule_id!r}", err=True)
    sys.exit(1)


@main.group()
def rules() -> None:
    """The whole rule document."""


@rules.command("import")
@click.argument("source", type=click.File("r"))
@pass_context
def rules_import(ctx: Context, source: TextIO) -> None:
    """Replace the rules with a JSON file ('-': stdin), validated before anything is written."""
    with one_line_errors():
        ruleset = parse_rules(source.read())
        _report(
            ctx.store.set_rules(ruleset, actor=ctx.actor),
            f"rules import ({len(ruleset.rules)} rules)",
        )
        _warn_unknown_targets(ctx.store)


@rules.command("export")
@click.argument("target", type=click.File("w"), default="-")
@pass_context
def rules_export(ctx: Context, target: TextIO) -> None:
    """Write the rules in force as JSON (default: stdout)."""
    with one_line_errors():
        from ..rules import DEFAULT_RULES  # noqa: PLC0415 - only for this fallback

        ruleset = ctx.store.get_rules() or DEFAULT_RULES
    target.write(json.dumps(ruleset.to_document(), indent=2) + "\n")


@main.group()
def percent() -> None:
    """Sticky percentage rollouts."""


# ignore_unknown_options: "-1" reaches VALUE (and is refused as a percentage, exit 1)
# instead of being taken for an unknown option.
@percent.command("set", context_settings={"ignore_unknown_options": True})
@click.argument("value", type=float)
@click.option("--rule", "rule_id", default="percent", show_default=True, help="Rule id.")
@click.option("--by", default=None, help="ip (default), cookie:NAME, header:NAME or query:NAME.")
@click.option("--salt", default=None, help="Bucket salt (default: the rule id). Keep it to grow.")
@click.option("--target", default="canary", show_default=True, help="Upstream for a new rule.")
@pass_context
def percent_set(ctx: Context, value: float, rule_id: str, by: str | None, salt: str | None,
                target: str) -> None:  # fmt: skip
    """Send VALUE percent of users to the canary (raising it keeps everyone already in)."""
    number = int(value) if value.is_integer() else value  # 10, not 10.0, in the rules
    with one_line_errors():
        change = ctx.store.set_percent(number, rule_id=rule_id, by=by, salt=salt, target=target,
                                       actor=ctx.actor)  # fmt: skip
        _report(change, f"percent {rule_id!r} = {value:g}%")
        _warn_unknown_targets(ctx.store)


# -- upstreams -----------------------------------------------------------------------------
@main.group()
def upstream() -> None:
    """Switch where an upstream name points, at runtime (optionally for one host)."""


@upstream.command("set")
@click.argument("name")
@click.argument("url")
@click.option("--host", default=None, help="Only for requests to this host.")
@pass_context
def upstream_set(ctx: Context, name: str, url: str, host: str | None) -> None:
    """Point NAME at URL on every instance."""
    with one_line_errors():
        _report(ctx.store.set_upstream(name, url, host=host, actor=ctx.actor), f"upstream {name!r}")


@upstream.command("remove")
@click.argument("name")
@click.option("--host", default=None, help="Only the route for this host.")
@pass_context
def upstream_remove(ctx: Context, name: str, host: str | None) -> None:
    """Forget the store's URL for NAME (the routers' own configuration applies again)."""
    with one_line_errors():
        _report(ctx.store.remove_upstream(name, host=host, actor=ctx.actor), f"upstream {name!r}")


# -- servers -------------------------------------------------------------------------------
@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8080, show_default=True, help="Port to listen on.")
@click.option("--token", envvar="CANARY_MW_ADMIN_TOKEN", default=None,
              help="Bearer token clients must send (env CANARY_MW_ADMIN_TOKEN).")  # fmt: skip
@click.option(
    "--token-file", type=click.File("r"), default=None, help="Read the token from a file."
)
@click.option("--insecure-no-auth", is_flag=True,
              help="Run without a token; only allowed when listening on loopback.")  # fmt: skip
@click.option(
    "--upstream",
    "upstreams",
    multiple=True,
    help="NAME=URL: the routers' own upstreams, for explain (repeatable).",
)
@click.option("--force-header", default=None, help="The routers' force_header, for explain.")
@click.option("--force-cookie", default=None, help="The routers' force_cookie, for explain.")
@pass_context
def admin(ctx: Context, host: str, port: int, token: str | None, token_file: TextIO | None,
          insecure_no_auth: bool, upstreams: tuple[str, ...], force_header: str | None,
          force_cookie: str | None) -> None:  # fmt: skip
    """Serve the admin HTTP API and the console page; prints where it listens, whether a token
    is required, the console's URL and where the OpenAPI document is (/openapi.json; request
    bodies: docs/admin-api.md)."""
    if token_file is not None:
        token = token_file.read().strip()
    loopback = host in ("localhost", "127.0.0.1", "::1") or host.startswith("127.")
    if insecure_no_auth and not loopback:
        click.echo("error: --insecure-no-auth only on a loopback address", err=True)
        sys.exit(1)
    if token is not None and len(token) < 16:
        # Said here because admin_app() names the CLI's token by its internal name ('api').
        click.echo(
            "error: the admin token (--token, --token-file or CANARY_MW_ADMIN_TOKEN) must be at "
            "least 16 characters; make one with: openssl rand -hex 24",
            err=True,
        )
        sys.exit(1)
    try:
        # uvicorn is the optional 'admin' extra; Starlette, a dependency, is imported only here.
        import uvicorn  # noqa: PLC0415

        from .api import admin_app  # noqa: PLC0415 - Starlette
    except ImportError as exc:
        click.echo(f"error: serving the admin API needs {exc.name or 'uvicorn'}: "
                   "pip install 'canary-mw[admin]'", err=True)  # fmt: skip
        sys.exit(1)
    with one_line_errors():
        app = admin_app(
            ctx.store, token=token, allow_unauthenticated=insecure_no_auth,
            upstreams=_pairs(upstreams, "=", "--upstream"), force_header=force_header,
            force_cookie=force_cookie,
        )  # fmt: skip
    # Bound here, not by uvicorn, so "port in use" is one clear line and the banner below is
    # printed only once the address is really ours (with the real port when --port 0).
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family)
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        click.echo(f"error: cannot listen on {host}:{port} ({reason}); pick another with --port "
                   "or --host", err=True)  # fmt: skip
        sys.exit(1)
    for line in render.admin_banner(ctx.store, sock.getsockname()[:2], auth=token is not None):
        click.echo(line)
    sys.stdout.flush()
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, help="Port of the stable app + router.")
@click.option("--canary-port", default=8001, show_default=True, help="Port of the canary app.")
def demo(host: str, port: int, canary_port: int) -> None:
    """Run the two-version demo: stable and canary apps, a router, and Redis (the one in
    CANARY_MW_STORE or REDIS_URL, else a private redis-server, else the memory store)."""
    # Only this command runs a router (CanaryWSGI and all it needs): the others do not import it.
    from ..demo import run_demo  # noqa: PLC0415

    raise SystemExit(run_demo(host=host, port=port, canary_port=canary_port))


# -- --store / --actor after the command -----------------------------------------------------
def _override(attribute: str) -> Callable[[click.Context, click.Parameter, str | None], None]:
    def callback(ctx: click.Context, _: click.Parameter, value: str | None) -> None:
        if value is not None:
            setattr(ctx.ensure_object(Context), attribute, value)

    return callback


main.add_command(rollout)


def _accept_store_options_everywhere(group: click.Group) -> None:
    """Users type ``canary-mw ip add --store URL 1.2.3.4`` as often as ``canary-mw --store URL
    ip add ...``: every command that talks to the store takes both options too, and they
    win over the ones before the command (and over the environment)."""
    for command in group.commands.values():
        if isinstance(command, click.Group):
            _accept_store_options_everywhere(command)
        elif command.name != "demo":
            command.params += [
                click.Option(["--store", "store_url"], default=None, expose_value=False,
                             callback=_override("url"), is_eager=True,
                             help="Store URL (overrides the one before the command)."),
                click.Option(["--actor", "actor_name"], default=None, expose_value=False,
                             callback=_override("actor"), is_eager=True,
                             help="Who the history records (overrides the one before)."),
            ]  # fmt: skip


main.add_command(mirror)
_accept_store_options_everywhere(main)
