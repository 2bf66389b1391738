"""The console in a real headless Chromium (Debian's ``chromium``, driven by
Playwright), against the running stack with a real relay and worker exposing their
metrics: sign in; see a failed outbox row and retry it (the relay then publishes it);
see a dead letter written by kcat and replay it (the worker then applies it); see
both actions in the audit log under the signed-in user; markup in a header, the
payload and the exception is shown as text. Screenshots of the main pages go to
``docs/`` (the README shows them)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio
from playwright.async_api import Browser, Page, async_playwright
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybus.brokers.kafka_admin import ensure_topic
from relaybus.settings import Settings
from tests.support.cli import REPO
from tests.support.console import USER, console_process, free_port
from tests.support.consumerdata import prepare_effects, unique
from tests.support.foreign import kcat_produce
from tests.support.outboxdata import Event, enqueue
from tests.support.poll import eventually
from tests.support.relayproc import relay_fleet

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DOCS = REPO / "docs"
MARKUP = "<img src=x onerror=alert(1)>"
SCRIPT = "<script>alert('dlq')</script>"


@pytest_asyncio.fixture(loop_scope="session")
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox"] if os.geteuid() == 0 else []
        )
        try:
            yield launched
        finally:
            await launched.close()


async def failed_row(engine: AsyncEngine, aggregate: str) -> uuid.UUID:
    """An outbox row the relay marked failed (as after a broker refusal), with markup
    in its error."""
    [row_id] = await enqueue(engine, aggregate, [Event(aggregate, "console.tick", {"n": 1})])
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "UPDATE outbox SET status = 'failed', attempts = 3, "
                "last_error = :error WHERE id = :id"
            ),
            {"id": row_id, "error": f"MessageSizeTooLargeError {MARKUP}"},
        )
    return row_id


async def row_state(engine: AsyncEngine, row_id: uuid.UUID) -> str:
    async with engine.connect() as conn:
        hot = (
            await conn.execute(text("SELECT status FROM outbox WHERE id = :id"), {"id": row_id})
        ).scalar_one_or_none()
        if hot is not None:
            return str(hot)
        cold = await conn.execute(
            text("SELECT outcome FROM outbox_archive WHERE id = :id"), {"id": row_id}
        )
        return f"archived:{cold.scalar_one_or_none()}"


def dead_letter(source: str, letter_id: str, consumer: str) -> None:
    """A dead letter in ``<source>.dlq`` written by kcat (not relaybus)."""
    headers = [
        (b"id", letter_id.encode()),
        (b"type", b"test.event"),
        (b"aggregatetype", b"test"),
        (b"aggregateid", b"k1"),
        (b"content-type", b"application/json"),
        (b"schema_version", b"1"),
        (b"occurred_at", b"2026-12-01T08:00:00Z"),
        (b"note", MARKUP.encode()),
        (b"x-dlq-reason", b"max-attempts"),
        (b"x-exception-type", b"RuntimeError"),
        (b"x-exception-message", SCRIPT.encode()),
        (b"x-attempts", b"3"),
        (b"x-consumer", consumer.encode()),
        (b"x-original-topic", source.encode()),
        (b"x-original-partition", b"0"),
        (b"x-original-offset", b"0"),
        (b"x-failed-at", b"2026-12-01T08:00:01Z"),
    ]
    body = json.dumps({"n": 7, "html": "<b>bold</b>"}).encode()
    kcat_produce(Settings().kafka_bootstrap, f"{source}.dlq", b"k1", [body], headers)


async def shoot(page: Page, name: str) -> None:
    await page.screenshot(path=str(DOCS / f"console-{name}.png"), full_page=True)


async def test_operator_retries_a_row_and_replays_a_letter_in_the_browser(
    settings: Settings, engine: AsyncEngine, browser: Browser, tmp_path: Path
) -> None:
    await prepare_effects(engine)
    aggregate = f"console{uuid.uuid4().hex[:6]}"
    await ensure_topic(settings.kafka_bootstrap, f"outbox.event.{aggregate}", 1)
    row_id = await failed_row(engine, aggregate)
    name = unique("console")
    source = f"t.console.{uuid.uuid4().hex[:8]}"
    await ensure_topic(settings.kafka_bootstrap, source, 1)
    await ensure_topic(settings.kafka_bootstrap, f"{source}.dlq", 1)
    letter_id = str(uuid.uuid4())
    dead_letter(source, letter_id, name)

    relay_port, worker_port = free_port(), free_port()
    endpoints = {
        "relay": f"http://127.0.0.1:{relay_port}/metrics",
        "worker": f"http://127.0.0.1:{worker_port}/metrics",
    }
    worker_env = {
        **os.environ,
        "RELAYBUS_TEST_NAME": name,
        "RELAYBUS_TEST_BROKER": "kafka",
        "RELAYBUS_TEST_SOURCE": source,
        "RELAYBUS_WORKER_METRICS_PORT": str(worker_port),
    }
    worker = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "relaybus"),
        "worker",
        "tests.support.consumer_apps:effects",
        cwd=REPO,
        env=worker_env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    routes = [{"pattern": "*", "brokers": ["kafka"]}]
    try:
        with (
            relay_fleet(tmp_path, routes, RELAYBUS_RELAY_METRICS_PORT=str(relay_port)) as fleet,
            console_process(
                tmp_path, RELAYBUS_CONSOLE_METRICS_ENDPOINTS=json.dumps(endpoints)
            ) as console,
        ):
            fleet.start("console-relay")
            dialogs: list[str] = []
            page = await browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("dialog", lambda d: dialogs.append(d.message))

            # Anonymous: every page leads to the sign-in form.
            await page.goto(f"{console.url}/outbox")
            assert page.url == f"{console.url}/login"
            await page.fill("input[name=username]", USER)
            await page.fill("input[name=password]", console.password)
            await page.click("button[type=submit]")
            await page.wait_for_url(f"{console.url}/")
            assert f"signed in as {USER}" in await page.inner_text("header")

            async def both_up() -> bool:
                await page.reload()
                body = await page.inner_text("main")
                return "relay — up" in body and "worker — up" in body

            await eventually(both_up, within=60, what="relay and worker up on the overview")
            assert await page.locator("a[href$='/metrics']").count() == 2
            await shoot(page, "overview")

            # A failed outbox row, its error as text; retry it.
            await page.goto(f"{console.url}/outbox")
            row = page.locator(f"tr[data-id='{row_id}']")
            assert MARKUP in await row.inner_text()
            await shoot(page, "outbox")
            await row.get_by_role("button", name="retry").click()
            await page.wait_for_url(f"{console.url}/outbox")
            assert "1 failed row(s) put back to pending" in await page.inner_text(".flash")

            async def published() -> bool:
                return await row_state(engine, row_id) == "archived:published"

            await eventually(published, within=60, what="the retried row published")

            # The dead letter: headers, payload and exception as text; replay it.
            await page.goto(f"{console.url}/dlq")
            await page.click(f"a[href='/dlq/kafka/{source}.dlq']")
            letter = page.locator(f"tr.letter[data-id='{letter_id}']")
            assert SCRIPT in await letter.inner_text()
            await page.locator("tr.detail summary").first.click()
            details = await page.inner_text("tr.detail")
            assert MARKUP in details
            assert "<b>bold</b>" in details
            await shoot(page, "dead-letters")
            await letter.locator("input[type=checkbox]").check()
            await page.get_by_role("button", name="replay selected").click()
            assert f"replayed 1 to {source}" in await page.inner_text(".flash")

            async def applied() -> bool:
                async with engine.connect() as conn:
                    found = await conn.execute(
                        text("SELECT count(*) FROM consumer_effects WHERE message_id = :id"),
                        {"id": letter_id},
                    )
                    return int(found.scalar_one()) == 1

            await eventually(applied, within=60, what="the replayed letter applied")

            # Both actions in the audit log, by the signed-in user, with their ids.
            await page.goto(f"{console.url}/audit")
            entries = await page.locator("tr.entry").all_inner_texts()
            retry = next(e for e in entries if "outbox.retry" in e)
            replay = next(e for e in entries if "dlq.replay" in e)
            assert USER in retry
            assert str(row_id) in retry
            assert USER in replay
            assert letter_id in replay
            await page.fill("input[name=q]", letter_id)
            await page.click("form[action='/audit'] button")
            assert await page.locator("tr.entry").count() == 1
            await page.goto(f"{console.url}/audit")
            await shoot(page, "audit")

            # Nothing the wire or the database said became markup.
            assert dialogs == []
            for p in ("/outbox", f"/dlq/kafka/{source}.dlq"):
                await page.goto(f"{console.url}{p}")
                assert await page.locator("img, script").count() == 0
            await page.close()
    finally:
        worker.terminate()
        await asyncio.wait_for(worker.wait(), 60)
