"""The web console end to end: a real browser drives the whole stack.

`hookstream all` runs as a child process (own database and topics), a real local HTTP receiver
takes the webhooks, and Debian's Chromium (never a downloaded browser) is driven through the
console: sign in, add a webhook (the secret is shown once), publish an order.created event to
Kafka, watch the delivery log turn "successful", open the attempts (HTTP 200), redeliver, and
check that the receiver got exactly two correctly signed requests. Then edit the webhook to deliver
in order per resource (issue 14): the API reads it back, the list shows it, and of two events of one
order published while the endpoint hangs, the later one shows "waiting behind" the earlier one and
reaches the receiver only after it.

Issue 16 adds: the webhooks list fits 1400 and 1024 px wide (Delete visible) with a 24 h health chart;
"View events" keeps its filters (a date range too) in the URL across a reload; the events explorer
finds an event by id and opens a delivery's attempts, whose request (URL, signed headers, the exact
body) and response are shown as text even when the endpoint answers markup; a delivery waiting for a
retry says "retrying" with its retry schedule; and "Recover failed deliveries" redelivers a delivery
that failed once the endpoint answers again, showing its progress.

Screenshots land in ``.local/``: ``console-webhooks.png``, ``console-filter.png``, ``console-events.png``,
``console-attempts.png``, ``console-ordering.png`` (1400×900), and at 1400×900 and 1024×768 each
(``-1400.png``, ``-1024.png``): ``console-list-*``, ``console-explorer-*``, ``console-attempt-detail-*``,
``console-retrying-*`` and ``console-webhook-*``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import re
import shutil
from zoneinfo import ZoneInfo

import aiohttp
import pytest
from playwright.async_api import async_playwright, expect

from hookstream.core.kafka import open_producer
from hookstream.core.orgs import create_organization
from hookstream.core.publish import make_event, publish_event
from hookstream.core.settings import Settings
from tests.receiver import Behaviour, Receiver
from tests.support import ROOT, wait_for

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1400, "height": 900}
SMALL_VIEWPORT = {"width": 1024, "height": 768}
# Not UTC, and not a whole hour off it: the console's local-time inputs must be converted, not copied.
BROWSER_TZ = "Asia/Kolkata"
UI_TIMEOUT_MS = 15_000
DELIVERY_TIMEOUT_MS = 45_000  # publish -> router -> sender -> receiver -> log, seen through a 3 s refresh
READY_TIMEOUT_S = 60.0
CHANGE_REACHES_ROUTER_S = 2.0  # a webhook change reaches the router "within about a second" (CONTRACT §3)
SCREENSHOT_DIR = ROOT / ".local"

STORES = [("store_downtown", "Downtown"), ("store_airport", "Airport")]
# The last retry waits long, so a delivery that failed its first three attempts stays "retrying".
RETRY_DELAYS = "300ms,300ms,1h"
# What a hostile endpoint answers: markup that would run if the console ever used innerHTML.
HOSTILE_BODY = '<img src=x onerror="document.body.dataset.pwned=1"><b id="pwned">boom</b>'
HOSTILE_HEADER = '<b id="pwned-header">h</b>'


async def screenshots(page, name: str) -> None:
    """``.local/console-<name>-1400.png`` and ``-1024.png``: the page at both sizes, then back to 1400×900."""
    for size in (VIEWPORT, SMALL_VIEWPORT):
        await page.set_viewport_size(size)
        await page.screenshot(path=SCREENSHOT_DIR / f"console-{name}-{size['width']}.png")
    await page.set_viewport_size(VIEWPORT)


def local_input(when: dt.datetime) -> str:
    """A time as a person types it into the console's date inputs: the browser's local time."""
    return when.astimezone(ZoneInfo(BROWSER_TZ)).strftime("%Y-%m-%dT%H:%M:%S")


def reads_back(typed: str) -> str:
    """What a datetime-local input reads back for ``typed``: the browser leaves out ``:00`` seconds
    (HTML's normalized local date and time), so a minute with 0 seconds reads ``...T19:39``."""
    return typed.removesuffix(":00") if len(typed) == 19 else typed


async def wait_until_ready(base_url: str, process) -> None:
    """Poll GET /readyz until 200; fail at once, with the process log, if the process exits."""
    async with aiohttp.ClientSession() as session:
        async def ready() -> bool:
            if process.proc.poll() is not None:
                pytest.fail(f"hookstream all exited with {process.proc.returncode}:\n{process.output()[-4000:]}")
            try:
                async with session.get(f"{base_url}/readyz", timeout=aiohttp.ClientTimeout(total=2)) as res:
                    await res.read()
                    return res.status == 200
            except (aiohttp.ClientError, TimeoutError):
                return False

        try:
            await wait_for(ready, timeout_s=READY_TIMEOUT_S, interval_s=0.2, message="GET /readyz to answer 200")
        except AssertionError:
            pytest.fail(f"hookstream never became ready; its log:\n{process.output()[-4000:]}")


async def test_console_add_webhook_see_delivery_and_redeliver(db, hs_env, spawn):
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's Chromium (apt-get install -y chromium)")

    org_id, api_key = await create_organization(db, "Acme e2e")
    for store_id, name in STORES:
        await db.execute("INSERT INTO stores (organization_id, id, name) VALUES ($1, $2, $3)", org_id, store_id, name)
    store_id, store_name = STORES[0]
    settings = Settings.from_env(hs_env)
    base_url = "http://{}:{}".format(*settings.api_listen)
    SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)

    async with Receiver() as receiver:
        hook_url = receiver.url("/hook")
        process = spawn("all", env={"HOOKSTREAM_RETRY_DELAYS": RETRY_DELAYS})
        await wait_until_ready(base_url, process)

        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
            try:
                context = await browser.new_context(viewport=VIEWPORT, timezone_id=BROWSER_TZ)
                page = await context.new_page()
                page.set_default_timeout(UI_TIMEOUT_MS)
                expect.set_options(timeout=UI_TIMEOUT_MS)
                page_errors: list[str] = []
                page.on("pageerror", lambda exc: page_errors.append(str(exc)))

                await page.goto(base_url + "/")

                # A wrong key is refused with a message; the right one signs in.
                await page.get_by_label("API key").fill("hsk_000000000000000000_not-a-real-key")
                await page.get_by_role("button", name="Sign in").click()
                await expect(page.get_by_test_id("signin-message")).to_contain_text("not accepted")
                await page.get_by_label("API key").fill(api_key)
                await page.get_by_role("button", name="Sign in").click()
                await expect(page.get_by_role("heading", name="Webhooks")).to_be_visible()
                await expect(page.get_by_text("No webhooks yet.")).to_be_visible()

                # (+) Add new: Save stays disabled until URL, one event and one store are chosen.
                await page.get_by_test_id("add-webhook").click()
                dialog = page.get_by_test_id("webhook-dialog")
                await expect(dialog).to_be_visible()
                save = dialog.get_by_role("button", name="Save")
                await expect(save).to_be_disabled()
                await dialog.get_by_label("Endpoint URL").fill(hook_url)
                await expect(save).to_be_disabled()
                await dialog.get_by_test_id("event-order.created").check()
                await expect(save).to_be_disabled()
                await dialog.get_by_test_id(f"store-{store_id}").check()
                await expect(save).to_be_enabled()
                await dialog.get_by_label("Description").fill("e2e receiver")
                # A filter that does not compile is refused beside its field, with the position.
                await dialog.get_by_test_id("wh-filter").fill("data.order.total >")
                await save.click()
                await expect(dialog.locator("#wh-filter-error")).to_contain_text("line 1, column")
                await expect(dialog.get_by_test_id("wh-filter")).to_have_attribute("aria-invalid", "true")
                # "Test this filter" evaluates it on the sample event of the chosen type.
                await dialog.get_by_test_id("wh-filter").fill('type == "order.created"')
                await dialog.get_by_test_id("wh-filter-sample").select_option("order.created")
                await dialog.get_by_test_id("wh-filter-test").click()
                await expect(dialog.get_by_test_id("wh-filter-result")).to_contain_text("Matches")
                await dialog.get_by_test_id("wh-filter-sample").select_option("order.shipped")
                await dialog.get_by_test_id("wh-filter-test").click()
                await expect(dialog.get_by_test_id("wh-filter-result")).to_contain_text("Does not match")
                await page.screenshot(path=SCREENSHOT_DIR / "console-filter.png")
                await save.click()

                # The secret is shown once, with a copy button, and leaves the page when dismissed.
                secret_dialog = page.get_by_test_id("secret-dialog")
                await expect(secret_dialog).to_be_visible()
                await expect(secret_dialog.get_by_role("button", name="Copy")).to_be_visible()
                secret = await page.get_by_test_id("secret-value").input_value()
                assert secret.startswith("whsec_"), secret
                await secret_dialog.get_by_role("button", name="I have saved it").click()
                await expect(secret_dialog).to_be_hidden()
                # (cleared by the dialog's close handler: wait for it, as a person would see it)
                await expect(page.get_by_test_id("secret-value")).to_have_value("")
                assert secret not in await page.content()

                rows = page.get_by_test_id("webhook-row")
                await expect(rows).to_have_count(1)
                row = rows.first
                await expect(row.get_by_test_id("wh-row-url")).to_have_text(hook_url)
                await expect(row.get_by_test_id("wh-row-filter")).to_have_text('filter: type == "order.created"')
                await expect(row).to_contain_text("order.created")
                await expect(row).to_contain_text(store_name)
                await expect(row.get_by_role("switch")).to_be_checked()
                await expect(row.get_by_test_id("wh-failures")).to_have_text("0")
                await page.screenshot(path=SCREENSHOT_DIR / "console-webhooks.png")
                # The whole row fits, Delete included, at 1400 and at 1024 px wide (no sideways scrolling).
                for size in (VIEWPORT, SMALL_VIEWPORT):
                    await page.set_viewport_size(size)
                    await expect(row.get_by_role("button", name="Delete")).to_be_in_viewport(ratio=1)
                    assert await page.eval_on_selector(
                        "#webhooks-table", "t => t.parentElement.scrollWidth <= t.parentElement.clientWidth"), size
                await page.set_viewport_size(VIEWPORT)

                # Publish a domain event exactly as upstream does.
                event = make_event("order.created", organization_id=org_id, store_id=store_id,
                                   data={"order": {"id": "ord_e2e_1", "total": "42.10", "currency": "USD"}})
                async with open_producer(settings.kafka_bootstrap_servers) as producer:
                    await publish_event(producer, event, settings.source_topics)

                # View events: the row appears and turns "successful" (auto-refresh, no reload).
                await row.get_by_role("button", name="View events").click()
                await expect(page.get_by_test_id("events-endpoint")).to_have_text(hook_url)
                event_row = page.locator(f'[data-testid="event-row"][data-event-id="{event["id"]}"]')
                await expect(event_row.get_by_test_id("event-status")).to_have_text(
                    "successful", timeout=DELIVERY_TIMEOUT_MS)
                await expect(event_row.get_by_test_id("event-type")).to_have_text("order.created")
                await expect(event_row).to_contain_text(store_name)
                await expect(event_row.get_by_test_id("event-attempts")).to_have_text("1")
                await page.screenshot(path=SCREENSHOT_DIR / "console-events.png")

                # The filters, a date range too, live in the URL: a reload (or a shared link) keeps them.
                an_hour_ago = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
                await page.get_by_test_id("filter-status").select_option("succeeded")
                await page.get_by_test_id("filter-since").fill(local_input(an_hour_ago))
                await expect(page).to_have_url(re.compile(r"status=succeeded"))
                since_utc = an_hour_ago.strftime("%Y-%m-%dT%H:%M:%SZ")
                await expect(page).to_have_url(re.compile("since=" + re.escape(since_utc.replace(":", "%3A"))))
                await page.reload()
                await expect(page.get_by_test_id("filter-status")).to_have_value("succeeded")
                await expect(page.get_by_test_id("filter-since")).to_have_value(reads_back(local_input(an_hour_ago)))
                await expect(event_row.get_by_test_id("event-status")).to_have_text("successful")
                # A range that ends before the event leaves it out; clearing the filters brings it back.
                await page.get_by_test_id("filter-until").fill(local_input(an_hour_ago + dt.timedelta(minutes=30)))
                await expect(page.get_by_text("No events match these filters.")).to_be_visible()
                await expect(event_row).to_have_count(0)
                await page.get_by_test_id("filters-clear").click()
                await expect(event_row).to_have_count(1)
                assert "?" not in page.url, page.url

                # Its attempts: one, HTTP 200; Redeliver adds a second, also 200.
                await event_row.click()
                attempts = page.get_by_test_id("attempts-dialog")
                await expect(attempts).to_be_visible()
                await expect(attempts.get_by_test_id("attempts-count")).to_have_attribute("data-count", "1")
                await expect(attempts.get_by_test_id("attempt-http")).to_have_text(["HTTP 200"])
                await attempts.get_by_role("button", name="Redeliver").click()
                await expect(attempts.get_by_test_id("attempts-count")).to_have_attribute(
                    "data-count", "2", timeout=DELIVERY_TIMEOUT_MS)
                await expect(attempts.get_by_test_id("attempt-http")).to_have_text(["HTTP 200", "HTTP 200"])
                await expect(attempts.get_by_test_id("attempts-delivery-status")).to_have_text(
                    "successful", timeout=DELIVERY_TIMEOUT_MS)
                await page.screenshot(path=SCREENSHOT_DIR / "console-attempts.png")
                await attempts.get_by_role("button", name="Close").last.click()
                await expect(event_row.get_by_test_id("event-attempts")).to_have_text("2")

                # The events explorer (header link) finds the event by its exact id, with where it went.
                await page.get_by_test_id("nav-events").click()
                await expect(page.get_by_role("heading", name="Events", exact=True)).to_be_visible()
                await page.get_by_test_id("explorer-event-id").fill(event["id"])
                await page.get_by_test_id("explorer-search").click()
                await expect(page).to_have_url(re.compile("event_id=" + re.escape(event["id"])))
                found = page.get_by_test_id("explorer-row")
                await expect(found).to_have_count(1)
                await expect(found.get_by_test_id("explorer-id")).to_have_text(event["id"])
                await expect(found.get_by_test_id("explorer-type")).to_have_text("order.created")
                delivery = found.get_by_test_id("explorer-delivery")
                await expect(delivery).to_have_count(1)
                await expect(delivery).to_contain_text(hook_url)
                await expect(delivery.get_by_test_id("explorer-delivery-status")).to_have_text("successful")
                await expect(delivery).to_contain_text("2 attempts")
                await page.reload()  # the search is in the URL
                await expect(page.get_by_test_id("explorer-event-id")).to_have_value(event["id"])
                await expect(found).to_have_count(1)
                await screenshots(page, "explorer")
                # An id that is not there says so.
                await page.get_by_test_id("explorer-event-id").fill("evt_not_there")
                await page.get_by_test_id("explorer-search").click()
                await expect(page.get_by_text("No event with the id evt_not_there.")).to_be_visible()
                await page.get_by_test_id("explorer-event-id").fill(event["id"])
                await page.get_by_test_id("explorer-search").click()

                # A click on the delivery opens its attempts; an attempt shows its request and response.
                await delivery.click()
                await expect(attempts).to_be_visible()
                await expect(attempts.get_by_test_id("attempts-webhook")).to_have_text(hook_url)
                await expect(attempts.get_by_test_id("attempts-count")).to_have_attribute("data-count", "2")
                first_attempt = attempts.locator('[data-testid="attempt"][data-attempt="1"]')
                await first_attempt.get_by_text("Request and response").click()
                await expect(first_attempt.get_by_test_id("attempt-request-url")).to_have_text(hook_url)
                request_headers = first_attempt.get_by_test_id("attempt-request-headers")
                await expect(request_headers.locator("tr", has_text="webhook-signature")).to_contain_text("v1,")
                await expect(request_headers.locator("tr", has_text="webhook-id")).to_contain_text(event["id"])
                sent = [r for r in receiver.at("/hook") if r.headers.get("webhook-id") == event["id"]]
                await expect(first_attempt.get_by_test_id("attempt-request-body")).to_have_text(sent[0].body.decode())
                await expect(first_attempt.get_by_test_id("attempt-response-status")).to_have_text("HTTP 200")
                await expect(first_attempt.get_by_test_id("attempt-response-excerpt")).to_have_text("ok")
                assert secret not in await page.content()
                await screenshots(page, "attempt-detail")
                # ... and leads to that webhook's delivery log.
                await attempts.get_by_test_id("attempts-webhook-log").click()
                await expect(attempts).to_be_hidden()
                await expect(page.get_by_test_id("events-endpoint")).to_have_text(hook_url)
                await expect(event_row.get_by_test_id("event-status")).to_have_text("successful")

                # The list's 24 h health: the two successful attempts.
                await page.get_by_test_id("nav-webhooks").click()
                row = page.get_by_test_id("webhook-row").first
                await expect(row.get_by_test_id("wh-health")).to_contain_text("100 %")
                await expect(row.get_by_test_id("wh-health").locator("svg rect.ok")).not_to_have_count(0)
                await screenshots(page, "list")

                # Send test offers the webhook's event types; the body is that type's sample, signed.
                await row.get_by_role("button", name="Send test").click()
                test_dialog = page.get_by_test_id("test-dialog")
                await expect(test_dialog.get_by_test_id("test-event-type").locator("option")).to_have_text(
                    ["webhook.test (a ping)", "order.created"])
                await test_dialog.get_by_test_id("test-event-type").select_option("order.created")
                await test_dialog.get_by_role("button", name="Send test event").click()
                await expect(test_dialog).to_be_hidden()

                def typed_test_send():
                    return next((r for r in receiver.at("/hook") if r.headers.get("webhook-id", "").startswith("evt_test")
                                 and json.loads(r.body)["type"] == "order.created"), None)

                test_request = await wait_for(typed_test_send, timeout_s=DELIVERY_TIMEOUT_MS / 1000,
                                              message="the typed test send to reach the receiver")
                assert test_request.verify(secret)
                assert json.loads(test_request.body)["data"]["order"], test_request.body

                # An endpoint that fails three times (answering markup): the delivery is "retrying", with
                # its next retry due in an hour; its attempts show the response as text, never as markup.
                receiver.script("/hook", *[Behaviour(status=500, body=HOSTILE_BODY, headers={"X-Evil": HOSTILE_HEADER})] * 3)
                retried = make_event("order.created", organization_id=org_id, store_id=store_id,
                                     data={"order": {"id": "ord_e2e_retry", "total": "7.00", "currency": "USD"}})
                async with open_producer(settings.kafka_bootstrap_servers) as producer:
                    await publish_event(producer, retried, settings.source_topics)
                await row.get_by_role("button", name="View events").click()
                retried_row = page.locator(f'[data-testid="event-row"][data-event-id="{retried["id"]}"]')
                await expect(retried_row.get_by_test_id("event-attempts")).to_have_text("3", timeout=DELIVERY_TIMEOUT_MS)
                await expect(retried_row.get_by_test_id("event-status")).to_have_text("retrying")
                await expect(retried_row.get_by_test_id("event-next")).to_contain_text("next at")
                error_text = await retried_row.get_by_test_id("event-error").text_content()
                assert error_text is not None and error_text.count("HTTP 500") == 1, error_text
                await retried_row.click()
                await expect(attempts.get_by_test_id("retry-schedule")).to_contain_text("retry 3 at")
                third = attempts.locator('[data-testid="attempt"][data-attempt="3"]')
                await third.get_by_text("Request and response").click()
                await expect(third.get_by_test_id("attempt-response-status")).to_have_text("HTTP 500")
                await expect(third.get_by_test_id("attempt-response-excerpt")).to_have_text(HOSTILE_BODY)
                await expect(third.get_by_test_id("attempt-response-headers").locator("tr", has_text="x-evil")).to_contain_text(
                    HOSTILE_HEADER)
                await expect(page.locator("#pwned, #pwned-header")).to_have_count(0)
                assert await page.evaluate("document.body.dataset.pwned") is None
                await screenshots(page, "retrying")
                # Redeliver pulls the retry forward; the endpoint answers 200 again.
                await attempts.get_by_role("button", name="Redeliver").click()
                await expect(attempts.get_by_test_id("attempts-delivery-status")).to_have_text(
                    "successful", timeout=DELIVERY_TIMEOUT_MS)
                await attempts.get_by_role("button", name="Close").last.click()

                # Recovery: a delivery that failed (410 is not retried) is redelivered once the endpoint is back.
                receiver.set("/hook", Behaviour(status=410, body="gone"))
                lost = make_event("order.created", organization_id=org_id, store_id=store_id,
                                  data={"order": {"id": "ord_e2e_lost", "total": "9.00", "currency": "USD"}})
                async with open_producer(settings.kafka_bootstrap_servers) as producer:
                    await publish_event(producer, lost, settings.source_topics)
                lost_row = page.locator(f'[data-testid="event-row"][data-event-id="{lost["id"]}"]')
                await expect(lost_row.get_by_test_id("event-status")).to_have_text("failed", timeout=DELIVERY_TIMEOUT_MS)
                receiver.set("/hook", Behaviour())
                await expect(page.get_by_test_id("recover-since")).not_to_have_value("")  # the last 24 h
                await page.get_by_test_id("recover-start").click()
                await page.get_by_test_id("confirm-dialog").get_by_role("button", name="Recover").click()
                progress = page.get_by_test_id("recover-progress")
                await expect(progress).to_have_attribute("data-status", "finished", timeout=DELIVERY_TIMEOUT_MS)
                await expect(page.get_by_test_id("recover-text")).to_contain_text("1 failed delivery")
                await expect(lost_row.get_by_test_id("event-status")).to_have_text("successful", timeout=DELIVERY_TIMEOUT_MS)
                await expect(page.get_by_test_id("health-summary")).to_contain_text("failed in the last 24 hours")
                await page.get_by_test_id("health-7d").click()
                await expect(page.get_by_test_id("health-summary")).to_contain_text("in the last 7 days")
                await page.get_by_test_id("health-24h").click()
                await screenshots(page, "webhook")
                # (the failed attempt, then the recovered one)
                assert len([r for r in receiver.at("/hook") if r.headers.get("webhook-id") == lost["id"]]) == 2

                # Edit: ordering "In order per product/order"; the API reads it back, the list shows it.
                await page.get_by_test_id("events-back").click()
                row = page.get_by_test_id("webhook-row").first
                await expect(row.get_by_test_id("wh-row-ordering")).to_have_count(0)
                webhook_id = await row.get_attribute("data-webhook-id")
                await row.get_by_role("button", name="Edit").click()
                await expect(dialog).to_be_visible()
                ordering = dialog.get_by_label("Ordering")
                await expect(ordering).to_have_value("none")
                await ordering.select_option(label="In order per product/order")
                await dialog.get_by_role("button", name="Save").click()
                await expect(dialog).to_be_hidden()
                await expect(row.get_by_test_id("wh-row-ordering")).to_have_text("In order per product/order")
                async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {api_key}"}) as session:
                    async with session.get(f"{base_url}/v1/webhooks/{webhook_id}") as res:
                        assert res.status == 200, await res.text()
                        webhook = await res.json()
                assert webhook["ordering"] == "per_resource", webhook
                assert webhook["filter"] == 'type == "order.created"', webhook  # the rest unchanged
                await row.get_by_role("button", name="Edit").click()
                await expect(dialog.get_by_label("Ordering")).to_have_value("per_resource")
                await dialog.get_by_role("button", name="Cancel").click()
                await expect(dialog).to_be_hidden()
                await asyncio.sleep(CHANGE_REACHES_ROUTER_S)

                # Two events of one order while the endpoint hangs: the second waits behind the first.
                receiver.set("/hook", Behaviour(mode="hang"))
                first, second = (make_event("order.created", organization_id=org_id, store_id=store_id,
                                            data={"order": {"id": "ord_e2e_2", "total": str(n), "currency": "USD"}})
                                 for n in (1, 2))
                async with open_producer(settings.kafka_bootstrap_servers) as producer:
                    for ordered_event in (first, second):
                        await publish_event(producer, ordered_event, settings.source_topics)
                await row.get_by_role("button", name="View events").click()
                first_row = page.locator(f'[data-testid="event-row"][data-event-id="{first["id"]}"]')
                second_row = page.locator(f'[data-testid="event-row"][data-event-id="{second["id"]}"]')
                await expect(second_row.get_by_test_id("event-status")).to_have_text(
                    f"waiting behind {first['id']}", timeout=DELIVERY_TIMEOUT_MS)
                # (pending; "retrying" once its hung first attempt has timed out and a retry is due)
                await expect(first_row.get_by_test_id("event-status")).to_have_text(re.compile(r"^(pending|retrying)$"))
                await page.screenshot(path=SCREENSHOT_DIR / "console-ordering.png")
                assert [r for r in receiver.at("/hook") if r.headers["webhook-id"] == second["id"]] == []
                # The endpoint answers again: the first is delivered, then the second.
                receiver.set("/hook", Behaviour())
                receiver.release_hangs()
                for ordered_row in (first_row, second_row):
                    await expect(ordered_row.get_by_test_id("event-status")).to_have_text(
                        "successful", timeout=DELIVERY_TIMEOUT_MS)

                assert page_errors == [], page_errors
            finally:
                await browser.close()

        # The receiver got exactly the two attempts of the first event, each signed with the secret shown once.
        await asyncio.sleep(0.5)  # room for a wrong extra request to show
        received = [r for r in receiver.at("/hook") if r.headers.get("webhook-id") == event["id"]]
        assert len(received) == 2, [r.headers.get("webhook-id") for r in receiver.at("/hook")]
        for request in received:
            assert request.verify(secret), request.headers
            assert request.headers["webhook-id"] == event["id"]
            body = json.loads(request.body)
            assert (body["id"], body["type"], body["store_id"], body["organization_id"]) == (
                event["id"], "order.created", store_id, org_id)
            assert body["data"] == event["data"]
        # The ordered pair: every attempt of the first arrived before the second's only one.
        of_first = [r for r in receiver.at("/hook") if r.headers.get("webhook-id") == first["id"]]
        of_second = [r for r in receiver.at("/hook") if r.headers.get("webhook-id") == second["id"]]
        assert of_first and len(of_second) == 1, [r.headers.get("webhook-id") for r in receiver.at("/hook")]
        assert max(r.at for r in of_first) <= of_second[0].at
        assert all(r.verify(secret) for r in of_first + of_second)
