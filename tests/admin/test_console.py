"""The console in a real browser: Debian's chromium driven by Playwright (no browser download),
against a real admin server (``canary-mw admin``), a real Redis and a real router under uvicorn
with a canary behind it, as an operator uses it.

Screenshots of every view are written to ``artifacts/console/`` (``CANARY_MW_ARTIFACTS``
moves the folder), which CI keeps. A missing chromium fails these tests, never skips them.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from canary_mw.stores import Store, store_from_url
from tests.support.routers import client_from
from tests.support.servers import AppServer, RedisServer, wait_until

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("CANARY_MW_ARTIFACTS", ROOT / "artifacts")) / "console"
TOKEN = "console-token-for-browser-tests"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
VIEWS = ["now", "rules", "sets", "upstreams", "history", "explain"]

try:
    from playwright.sync_api import Browser, Page, Route, expect, sync_playwright
except ImportError as exc:  # the 'test' extra installs it: fail, never skip
    raise ImportError("the console tests need playwright: pip install -e '.[test]'") from exc


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if CHROMIUM is None:
        pytest.fail(
            "chromium is not installed; the console tests need it (apt-get install chromium)"
        )
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def admin(
    redis_srv: RedisServer, router_prefix: str, canary_server: AppServer
) -> Iterator[AppServer]:
    command = [
        str(Path(sys.executable).parent / "canary-mw"), "--store", f"{redis_srv.url}?prefix={router_prefix}",
        "--actor", "ci", "admin", "--port", "{port}", "--upstream", f"canary={canary_server.url}",
        "--force-header", "X-Canary-Force", "--force-cookie", "canary_force",
    ]  # fmt: skip
    server = AppServer(command, env={"CANARY_MW_ADMIN_TOKEN": TOKEN}).start()
    wait_until(lambda: "console" in server.output(), timeout=10, what="the admin banner")
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
def store(redis_srv: RedisServer, router_prefix: str) -> Iterator[Store]:
    handle = store_from_url(redis_srv.url, prefix=router_prefix)
    yield handle
    handle.close()


@pytest.fixture
def page(browser: Browser, admin: AppServer) -> Iterator[Page]:
    """A fresh tab that may reach the admin server only: anything else is refused and noted,
    as is every script error and Content-Security-Policy violation."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.elsewhere = []  # type: ignore[attr-defined]
    page.errors = []  # type: ignore[attr-defined]

    def only_the_admin_server(route: Route) -> None:
        if route.request.url.startswith(admin.url + "/"):
            route.continue_()
        else:
            page.elsewhere.append(route.request.url)  # type: ignore[attr-defined]
            route.abort()

    page.route("**/*", only_the_admin_server)
    page.on("console", lambda message: message.type == "error" and page.errors.append(message.text))  # type: ignore[attr-defined]
    page.on("pageerror", lambda error: page.errors.append(str(error)))  # type: ignore[attr-defined]
    yield page
    context.close()


def served_by(address: str, router: AppServer) -> str:
    with client_from(address) as client:
        return client.get(router.url + "/echo").headers["x-canary-version"]


def sign_in(page: Page, admin: AppServer, token: str = TOKEN) -> None:
    page.goto(admin.url + "/")
    page.fill("#token", token)
    page.click("#sign-in-form button[type=submit]")


def screenshot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def confirm(page: Page) -> None:
    expect(page.locator("#confirm")).to_be_visible()
    page.click("#confirm-ok")


def test_an_operator_runs_a_release(
    page: Page, admin: AppServer, router: AppServer, store: Store
) -> None:
    store.clear_rules()
    store.set_mode("rules")
    store.remove_ips("ips", ["127.0.0.2"])
    assert wait_until(lambda: served_by("127.0.0.2", router) == "stable", timeout=5)

    # 1. A wrong token is refused with a message; the right one opens the Now view.
    sign_in(page, admin, "not-the-token-at-all")
    expect(page.locator("#sign-in-error")).to_contain_text(
        "That token was refused (403: invalid token)"
    )
    expect(page.locator("#now")).to_be_hidden()
    sign_in(page, admin)
    expect(page.locator("#now")).to_be_visible()
    expect(page.locator("#mode")).to_have_attribute("data-mode", "rules")
    assert page.evaluate("document.cookie") == ""  # the token is never a cookie
    assert page.evaluate("sessionStorage.getItem('canary_mw.token')") == TOKEN

    # 2. 127.0.0.2 added to `ips` on the page: the router sends it to the canary within a second.
    page.click("#views a[href='#sets']")
    page.fill("#set-name", "ips")
    page.fill("#set-members", "127.0.0.2")
    page.click("#set-add")
    expect(page.locator("#set-done")).to_contain_text("add: 1 changed")
    wait_until(lambda: served_by("127.0.0.2", router) == "canary", timeout=1.0, interval=0.02,
               what="127.0.0.2 to be served by the canary")  # fmt: skip
    page.fill("#set-search", "127.0.0.2")
    page.click("#set-search-button")
    expect(page.locator("#set-search-result")).to_have_text("Yes: 127.0.0.2 is in ips.")
    with client_from("127.0.0.2") as client:
        for _ in range(20):
            assert client.get(router.url + "/echo").headers["x-canary-version"] == "canary"
    page.click("#views a[href='#now']")
    # Routers add their counts to the store every 5 s; the chart draws what each poll adds.
    expect(page.locator("#chart-legend [data-version=canary]")).not_to_have_text(
        "canary: 0 requests", timeout=15_000
    )
    expect(page.locator("#chart polyline[data-version=canary]")).to_have_count(1)
    screenshot(page, "now")

    # 3. The kill switch (confirmed) sends it to stable; rolling back from History, to the canary.
    page.click("#mode-off")
    confirm(page)
    expect(page.locator("#mode")).to_have_attribute("data-mode", "off")
    wait_until(lambda: served_by("127.0.0.2", router) == "stable", timeout=1.0, interval=0.02,
               what="the kill switch")  # fmt: skip
    page.click("#views a[href='#history']")
    top = page.locator("#history-list li.entry").first
    expect(top).to_contain_text("mode off")
    before = int(page.locator("#history-list li.entry").nth(1).get_attribute("data-version") or 0)
    screenshot(page, "history")
    page.locator("#history-list li.entry").nth(1).locator("button").click()
    confirm(page)
    expect(page.locator("#history-list li.entry").first).to_contain_text("rollback")
    assert store.get_config().mode in (None, "rules")
    wait_until(lambda: served_by("127.0.0.2", router) == "canary", timeout=1.0, interval=0.02,
               what="the rollback")  # fmt: skip
    assert store.history(1)[0].actor.startswith("api:api@127.0.0.1")
    assert before >= 1


def test_an_invalid_rule_shows_the_fields_error_and_writes_nothing(
    page: Page, admin: AppServer, store: Store
) -> None:
    sign_in(page, admin)
    page.click("#views a[href='#rules']")
    version = store.get_config().version
    page.fill("#rule-json", '{"id": "office", "when": {"ip": ["10.1.0.0/16", "nope"]}}')
    page.click("#rule-submit")
    error = page.locator("#rule-json-error")
    expect(error).to_contain_text("rules.office.when.ip.1")
    expect(error).to_contain_text("'nope' is not an IP address")
    screenshot(page, "rules")
    assert store.get_config().version == version
    assert page.locator("#rule-list li[data-rule=office]").count() == 0

    page.fill("#rule-json", '{"id": "office", "when": {"ip": ["10.1.0.0/16"]}, "target": "stable"}')
    page.fill("#rule-position", "0")
    page.click("#rule-submit")
    expect(page.locator("#rule-list li").first).to_have_attribute("data-rule", "office")
    expect(error).to_be_empty()
    page.locator("#rule-list li[data-rule=office] button", has_text="Remove").click()
    confirm(page)
    expect(page.locator("#rule-list li[data-rule=office]")).to_have_count(0)

    # Edit (the rule as JSON), reorder, disable: each one PUT of the whole list, nothing lost.
    users = page.locator("#rule-list li[data-rule=users]")
    users.locator("button", has_text="Edit").click()
    edited = '{"id": "users", "when": {"cookie": "canary_user", "in_set": "users"}, "description": "VIPs"}'
    page.fill("#rule-json", edited)
    page.click("#rule-submit")
    expect(page.locator("#rule-submit")).to_have_text("Add")  # saved, and the list re-read
    expect(users).not_to_contain_text("X-Canary-User")
    users.locator("button", has_text="Up").click()
    expect(page.locator("#rule-list li").first).to_have_attribute("data-rule", "users")
    users.locator("button", has_text="Disable").click()
    expect(users).to_have_class("rule disabled")
    stored = store.get_rules()
    assert stored is not None
    assert [(rule.id, rule.enabled) for rule in stored.rules] == [("users", False), ("ips", True)]
    assert stored.rules[0].spec["description"] == "VIPs"  # kept through the reorder
    store.clear_rules()

    # The sticky percentage says how many users a change moves before it is applied.
    page.locator("#percent-value").fill("20")
    expect(page.locator("#percent-moves")).to_contain_text(
        "0% → 20%: moves 20% of users to the canary"
    )
    page.click("#percent-form button[type=submit]")
    expect(page.locator("#rule-list li[data-rule=percent]")).to_contain_text('"percent":20')
    expect(page.locator("#percent-moves")).to_have_text(
        "Now 20% of users (sticky: buckets 0-1999 of 10,000)."
    )
    store.remove_rule("percent")


@pytest.mark.parametrize(
    ("address", "target", "rule"), [("127.0.0.2", "canary", "ips"), ("127.0.0.9", "stable", "")]
)
def test_explain_names_the_rule_the_router_follows(
    page: Page,
    admin: AppServer,
    router: AppServer,
    store: Store,
    address: str,
    target: str,
    rule: str,
) -> None:
    store.set_mode("rules")
    store.add_ips("ips", ["127.0.0.2"])
    wait_until(lambda: served_by("127.0.0.2", router) == "canary", timeout=5)
    sign_in(page, admin)
    page.click("#views a[href='#explain']")
    page.fill("#explain-ip", address)
    page.click("#explain-form button[type=submit]")
    decision = page.locator("#explain-decision")
    expect(decision).to_have_attribute("data-target", target)
    expect(decision).to_have_attribute("data-rule", rule)
    if rule:
        expect(page.locator(f".trace li[data-rule={rule}] > .outcome")).to_have_text("matched")
    assert served_by(address, router) == target
    screenshot(page, f"explain-{target}")


def test_every_view_loads_offline_under_the_policy_and_fits_a_phone(
    page: Page, admin: AppServer
) -> None:
    response = page.request.get(admin.url + "/")
    policy = response.headers["content-security-policy"]
    assert "default-src 'self'" in policy
    assert "script-src 'self';" in policy
    assert "unsafe-inline" not in policy
    sign_in(page, admin)
    expect(page.locator("#mode")).not_to_be_empty()
    for view in VIEWS:
        page.click(f"#views a[href='#{view}']")
        expect(page.locator(f"#{view}")).to_be_visible()
        page.wait_for_load_state("networkidle")
        screenshot(page, f"offline-{view}")
    page.set_viewport_size({"width": 375, "height": 740})
    for view in VIEWS:
        page.click(f"#views a[href='#{view}']")
        expect(page.locator(f"#{view}")).to_be_visible()
        wide = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert wide <= 0, f"{view} is {wide}px wider than a phone"
        screenshot(page, f"phone-{view}")
    assert page.elsewhere == []  # type: ignore[attr-defined]
    assert page.errors == []  # type: ignore[attr-defined]


def test_sets_in_bulk_and_an_upstream_per_host(page: Page, admin: AppServer, store: Store) -> None:
    store.set_mode("rules")
    store.add_ips("ips", ["127.0.0.2"])
    sign_in(page, admin)
    page.click("#views a[href='#sets']")
    page.fill("#set-name", "ips")
    page.fill("#set-members", "10.9.0.1, 10.9.0.2\n10.9.0.3 10.8.0.0/16")
    page.click("#set-add")
    expect(page.locator("#set-done")).to_contain_text("add: 4 changed")
    page.fill("#set-search", "10.8.7.7")
    page.click("#set-search-button")
    expect(page.locator("#set-search-result")).to_have_text(
        "Yes: 10.8.7.7 is in ips (through 10.8.0.0/16)."
    )
    page.fill("#set-members", "10.9.0.1 10.9.0.2 10.9.0.3 10.8.0.0/16")
    page.click("#set-remove")
    expect(page.locator("#set-done")).to_contain_text("remove: 4 changed")
    page.fill("#set-members", "10.9.0.1/8")
    page.click("#set-add")
    expect(page.locator("#set-error")).to_contain_text("did you mean 10.0.0.0/8?")
    assert not {"10.9.0.1", "10.0.0.0/8"} & store.members("ips")

    page.click("#views a[href='#upstreams']")
    page.fill("#upstream-name", "canary")
    page.fill("#upstream-url", "http://127.0.0.1:9")
    page.fill("#upstream-host", "shop.example.com")
    page.click("#upstream-form button[type=submit]")
    row = page.locator("#upstream-rows tr", has_text="shop.example.com")
    expect(row).to_contain_text("http://127.0.0.1:9")
    screenshot(page, "upstreams")
    page.click("#views a[href='#explain']")
    page.fill("#explain-ip", "127.0.0.2")
    page.fill("#explain-host", "shop.example.com")
    page.click("#explain-form button[type=submit]")
    expect(page.locator("#explain-result")).to_contain_text("Forwarded to http://127.0.0.1:9")
    page.click("#views a[href='#upstreams']")
    row.locator("button", has_text="Remove").click()
    confirm(page)
    expect(row).to_have_count(0)
    assert store.get_config().describe()["upstreams"] in (None, {})
