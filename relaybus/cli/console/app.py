"""The console's pages and actions (FastAPI, server-rendered Jinja2, no JavaScript).

Every route sits behind ``Guard`` (authentication, CSRF, same-origin); every action
is audited with the signed-in user as the actor, in the same transaction as the
action where the action is a database change. Values from the wire and the
database are rendered by Jinja2's autoescaping: markup in a header is text.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

from fastapi import FastAPI, Form, HTTPException, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybus.audit import amend, record
from relaybus.cli.console.auth import LoginThrottle, PasswordHash, Session, Sessions
from relaybus.cli.console.guard import COOKIE, Guard, allowed_hosts, session_id
from relaybus.cli.console.health import read_health
from relaybus.cli.lag import gather_waiting
from relaybus.cli.trace import stories
from relaybus.client_address import limit_key
from relaybus.consumers.dlq_admin import (
    BROKER_ERRORS,
    Browsed,
    BrowseLimits,
    DeadLetter,
    DeadLetterError,
    DeadLetterStore,
    KafkaDeadLetters,
    RabbitDeadLetters,
    browse,
    plan_replay,
)
from relaybus.consumers.naming import is_dlq
from relaybus.db import create_engine, session_factory
from relaybus.outbox.admin import OutboxAdmin
from relaybus.settings import Settings
from relaybus.tracing.jaeger_query import JaegerQuery, TraceStoreError, TraceView

T = TypeVar("T")
log = logging.getLogger(__name__)
TEMPLATES = Path(__file__).parent / "templates"
BROKERS = ("kafka", "rabbitmq")
# One DLQ page: at most 200 letters shown, 5 000 looked at, 10 s spent (a filter
# that matches little must not read a whole queue per view).
LETTERS_BROWSE = BrowseLimits(letters=200, scanned=5_000, seconds=10.0)
HEADERS_SHOWN = 40
HEADER_TEXT_SHOWN = 512
FAILED_SHOWN = 200
AUDIT_PAGE = 100
BODY_SHOWN = 4096


@dataclass
class Console:
    """What the routes share: settings, the password hash, sessions, the engine."""

    settings: Settings
    password: PasswordHash
    sessions: Sessions
    throttle: LoginThrottle
    engine: AsyncEngine | None = None

    def db(self) -> AsyncEngine:
        assert self.engine is not None, "the console's engine starts with the app"
        return self.engine

    def store(self, broker: str) -> DeadLetterStore:
        if broker == "kafka":
            return KafkaDeadLetters(self.settings.kafka)
        return RabbitDeadLetters(self.settings.rabbitmq, self.settings.rabbitmq_management)


def create_app(
    settings: Settings,
    password: PasswordHash,
    sessions: Sessions | None = None,
    hosts: frozenset[str] | None = None,
) -> Any:
    """The console as an ASGI app (the FastAPI app wrapped in its ``Guard``). Nothing
    connects until it starts (lifespan): the database engine is made then. ``hosts``:
    the Host values it answers (default: from the settings' bind address)."""
    console = Console(
        settings,
        password,
        sessions or Sessions(settings.console_session_idle_seconds),
        LoginThrottle(),
    )
    templates = Environment(
        loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(default=True)
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        console.engine = create_engine(settings.database_url, pool_size=2)
        try:
            yield
        finally:
            await console.engine.dispose()

    api = FastAPI(
        title="relaybus console", docs_url=None, redoc_url=None, openapi_url=None,
        lifespan=lifespan,
    )  # fmt: skip

    @api.exception_handler(DBAPIError)
    @api.exception_handler(OSError)
    async def unreachable(request: Request, err: Exception) -> Response:
        # A service down is a page that says so, not a 500 with a traceback.
        log.warning("console: %s %s: %s", request.method, request.url.path, type(err).__name__)
        return PlainText(f"a service is unreachable ({type(err).__name__}); try again", 503)

    def page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
        session: Session | None = request.scope.get("state", {}).get("session")
        flash = session.flash.pop() if session is not None and session.flash else None
        body = templates.get_template(template).render(
            user=session.user if session else None,
            csrf=session.csrf if session else "",
            flash=flash,
            metrics=settings.console_metrics_endpoints,
            **context,
        )
        return HTMLResponse(body, status_code=status)

    def user_of(request: Request) -> Session:
        session: Session | None = request.scope.get("state", {}).get("session")
        if session is None or session.user is None:  # the Guard let it through: cannot be
            raise HTTPException(401, "sign in first")
        return session

    def back(request: Request, to: str, message: str) -> RedirectResponse:
        user_of(request).flash.append(message)
        return RedirectResponse(to, status_code=303)

    # -- signing in and out --------------------------------------------------------

    @api.get("/login", response_class=HTMLResponse)
    async def login_form(request: Request) -> Response:
        session = console.sessions.get(session_id(request.scope))
        if session is not None and session.user is not None:
            return RedirectResponse("/", status_code=303)
        if session is None:
            sid, session = console.sessions.new(None)
        else:
            sid = session_id(request.scope) or ""
        request.scope.setdefault("state", {})["session"] = session
        response = page(request, "login.html")
        _set_cookie(response, sid, request, settings)
        return response

    @api.post("/login")
    async def login(
        request: Request, username: str = Form(""), password: str = Form("")
    ) -> Response:
        # The peer, or what a proxy in RELAYBUS_TRUSTED_PROXIES says (uvicorn reads
        # X-Forwarded-For from those only); IPv6 counted by its /64.
        wait = console.throttle.attempt(limit_key(request.client.host if request.client else None))
        if wait > 0:
            return PlainText(f"too many sign-in attempts: try again in {wait:.0f} s", 429)
        # Both checked, always: the time taken does not say which one was wrong.
        good_password = await asyncio.to_thread(console.password.matches, password[:1024])
        if not (username == settings.console_user and good_password):
            request.scope.setdefault("state", {})["session"] = console.sessions.get(
                session_id(request.scope)
            )
            return page(request, "login.html", 401, error="wrong user name or password")
        console.sessions.end(session_id(request.scope))  # a new id: no session fixation
        sid, _ = console.sessions.new(username)
        response = RedirectResponse("/", status_code=303)
        _set_cookie(response, sid, request, settings)
        return response

    @api.post("/logout")
    async def logout(request: Request) -> Response:
        console.sessions.end(session_id(request.scope))
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    # -- where work waits, and health ---------------------------------------------

    async def status() -> dict[str, Any]:
        (found, errors), health = await asyncio.gather(
            gather_waiting(settings, None), read_health(settings.console_metrics_endpoints)
        )
        return {"waiting": found, "errors": errors, "health": [asdict(h) for h in health]}

    @api.get("/", response_class=HTMLResponse)
    async def overview(request: Request) -> Response:
        return page(request, "overview.html", **await status())

    @api.get("/status.json")
    async def status_json() -> Response:
        return JSONResponse(await status())

    # -- the outbox -----------------------------------------------------------------

    @api.get("/outbox", response_class=HTMLResponse)
    async def outbox(request: Request) -> Response:
        admin = OutboxAdmin(console.db())
        backlog, failed, stalls = await asyncio.gather(
            admin.backlog_by_partition(), admin.rows("failed", FAILED_SHOWN), admin.stalls()
        )
        return page(
            request,
            "outbox.html",
            backlog=backlog,
            failed=failed,
            shown=FAILED_SHOWN,
            stalls=stalls,
        )

    @api.post("/outbox/retry")
    async def outbox_retry(
        request: Request, ids: list[str] = Form([]), every: str = Form("")
    ) -> Response:
        session = user_of(request)
        chosen = None if every == "yes" else _uuids(ids)
        count = await OutboxAdmin(console.db(), actor=session.user).retry(chosen)
        return back(request, "/outbox", f"{count} failed row(s) put back to pending")

    @api.post("/outbox/skip")
    async def outbox_skip(request: Request, ids: list[str] = Form([])) -> Response:
        session = user_of(request)
        count = await OutboxAdmin(console.db(), actor=session.user).skip(_uuids(ids))
        return back(request, "/outbox", f"{count} failed row(s) skipped (archived, not sent)")

    # -- dead letters ---------------------------------------------------------------

    async def broker_call(action: Callable[[], Coroutine[Any, Any, T]]) -> T | str:
        try:
            return await action()
        except DeadLetterError as err:
            return str(err)
        except BROKER_ERRORS as err:
            return f"unreachable: {type(err).__name__}: {err}"

    @api.get("/dlq", response_class=HTMLResponse)
    async def dlqs(request: Request) -> Response:
        found = {b: await broker_call(console.store(b).queues) for b in BROKERS}
        return page(request, "dlqs.html", found=found)

    @api.get("/dlq/{broker}/{name}", response_class=HTMLResponse)
    async def letters(
        request: Request,
        broker: str,
        name: str,
        reason: str = Query("", max_length=200),
        type_: str = Query("", alias="type", max_length=255),
    ) -> Response:
        _check_dlq(broker, name)
        select = _selector([], reason, type_)
        found = await broker_call(
            lambda: browse(console.store(broker), name, select, LETTERS_BROWSE)
        )
        shown = [_view(d) for d in found.letters] if isinstance(found, Browsed) else []
        cut = found.cut if isinstance(found, Browsed) else None
        if any(v["cut"] for v in shown):
            cut = (cut + "; " if cut else "") + "long bodies and headers are shortened"
        return page(
            request, "letters.html", broker=broker, name=name, reason=reason, type=type_,
            letters=shown, error=found if isinstance(found, str) else None,
            shown=LETTERS_BROWSE.letters, cut=cut,
        )  # fmt: skip

    @api.post("/dlq/{broker}/{name}/replay")
    async def replay_letters(
        request: Request,
        broker: str,
        name: str,
        ids: list[str] = Form([]),
        reason: str = Form(""),
        type_: str = Form("", alias="type"),
    ) -> Response:
        _check_dlq(broker, name)
        session = user_of(request)
        here = f"/dlq/{broker}/{name}"
        if not ids and not reason and not type_:
            return back(request, here, "choose letters (or a filter) to replay")
        select = _selector([str(u) for u in _uuids(ids)], reason, type_)
        store = console.store(broker)

        async def run() -> dict[str, Any]:
            plan = await plan_replay(store, name, select)
            if not plan.accepted:
                nothing = plan.audit_detail(broker, [], reason or None, type_ or None)
                await _audit(console.db(), "dlq.replay", name, nothing, session.user)
                return nothing
            # Recorded before sending, completed after: the replayed messages' spans
            # name this row.
            planned = plan.audit_detail(broker, [], reason or None, type_ or None)
            plan.audit_id = await _audit(
                console.db(), "dlq.replay", name, {**planned, "state": "sending"}, session.user
            )
            sent = await store.replay(plan)
            detail = plan.audit_detail(broker, sent, reason or None, type_ or None)
            async with session_factory(console.db())() as db, db.begin():
                await amend(db, plan.audit_id, detail)
            return detail

        outcome = await broker_call(run)
        if isinstance(outcome, str):
            return back(request, here, f"replay failed: {outcome}")
        refused = len(outcome["refused"])
        note = f" ({refused} refused: recorded origin is not this DLQ's source)" if refused else ""
        return back(request, here, f"replayed {outcome['replayed']} to {outcome['target']}{note}")

    @api.post("/dlq/{broker}/{name}/purge")
    async def purge_letters(request: Request, broker: str, name: str) -> Response:
        _check_dlq(broker, name)
        session = user_of(request)
        here = f"/dlq/{broker}/{name}"
        purged = await broker_call(lambda: console.store(broker).purge(name))
        if isinstance(purged, str):
            return back(request, here, f"purge failed: {purged}")
        await _audit(console.db(), "dlq.purge", name, {"broker": broker, "purged": purged},
                     session.user)  # fmt: skip
        return back(request, here, f"purged {purged} dead letters")

    # -- an order's or a message's story (traces in Jaeger) ------------------------------

    @api.get("/trace", response_class=HTMLResponse)
    async def trace_page(
        request: Request, ident: str = Query("", alias="id", max_length=64)
    ) -> Response:
        ident = ident.strip()
        views: list[TraceView] = []
        problem = None
        if ident and not ident.replace("-", "").isalnum():
            problem = "give a message id (UUID), an order id or a trace id"
        elif ident and not settings.tracing_jaeger_url:
            problem = "no trace store configured: set RELAYBUS_TRACING_JAEGER_URL"
        elif ident and settings.tracing_jaeger_url:
            try:
                views = await stories(JaegerQuery(settings.tracing_jaeger_url), ident)
            except TraceStoreError as err:
                problem = str(err)
        return page(request, "trace.html", ident=ident, views=views, problem=problem)

    # -- the audit log ----------------------------------------------------------------

    @api.get("/audit", response_class=HTMLResponse)
    async def audit(
        request: Request,
        q: str = Query("", max_length=200),
        before: int | None = Query(None, ge=1),
    ) -> Response:
        rows = await _audit_rows(console.db(), q, before)
        older = rows[-1]["id"] if len(rows) == AUDIT_PAGE else None
        return page(request, "audit.html", rows=rows, q=q, older=older)

    if hosts is None:
        hosts = allowed_hosts(
            settings.console_host, settings.console_port, settings.console_allowed_hosts
        )
    return Guard(api, console.sessions, hosts)


class PlainText(Response):
    media_type = "text/plain; charset=utf-8"

    def __init__(self, content: str, status_code: int) -> None:
        super().__init__(content, status_code)


def _set_cookie(response: Response, sid: str, request: Request, settings: Settings) -> None:
    # Secure follows the scheme in use (TLS here, or a trusted proxy's
    # X-Forwarded-Proto), not a setting: a cookie marked Secure over plain HTTP is
    # never sent back, one left unmarked over HTTPS could leak to plain HTTP.
    response.set_cookie(
        COOKIE, sid, httponly=True, samesite="strict", path="/",
        secure=request.url.scheme == "https",
        max_age=int(settings.console_session_idle_seconds),
    )  # fmt: skip


def _uuids(values: list[str]) -> list[uuid.UUID]:
    try:
        return [uuid.UUID(v) for v in values]
    except ValueError:
        raise HTTPException(400, "ids must be message ids (UUIDs)") from None


def _check_dlq(broker: str, name: str) -> None:
    if broker not in BROKERS or not is_dlq(name):
        raise HTTPException(404, "no such dead-letter queue")


def _selector(ids: list[str], reason: str, type_: str) -> Callable[[DeadLetter], bool]:
    wanted = set(ids)

    def select(letter: DeadLetter) -> bool:
        return (
            (not wanted or letter.id in wanted)
            and (not reason or reason in letter.reason)
            and (not type_ or letter.type == type_)
        )

    return select


def _view(letter: DeadLetter) -> dict[str, Any]:
    """A letter as the page shows it: body, header values and the number of headers
    each bounded (a page of 200 letters stays well under a few MB); ``cut`` says
    whether anything was shortened."""
    summary = letter.summary()
    body = summary["body"]
    cut = len(body) > BODY_SHOWN
    summary["body"] = body[:BODY_SHOWN] + ("…" if cut else "")
    headers: dict[str, str] = {}
    for n, (name, value) in enumerate(letter.headers.items()):
        if n == HEADERS_SHOWN:
            headers["…"] = f"{len(letter.headers) - n} more header(s) not shown"
            cut = True
            break
        headers[name[:HEADER_TEXT_SHOWN]] = value[:HEADER_TEXT_SHOWN] + (
            "…" if len(value) > HEADER_TEXT_SHOWN else ""
        )
        cut = cut or len(value) > HEADER_TEXT_SHOWN or len(name) > HEADER_TEXT_SHOWN
    summary["headers"] = headers
    for field_name in ("exception", "type", "key", "reason", "original", "consumer", "id"):
        text_value = summary[field_name]
        if len(text_value) > HEADER_TEXT_SHOWN:
            summary[field_name] = text_value[:HEADER_TEXT_SHOWN] + "…"
            cut = True
    summary["cut"] = cut
    return summary


async def _audit(
    engine: AsyncEngine, action: str, target: str, detail: dict[str, Any], actor: str | None
) -> int:
    async with session_factory(engine)() as session, session.begin():
        return (await record(session, action, target, detail, actor=actor)).id


async def _audit_rows(engine: AsyncEngine, q: str, before: int | None) -> list[dict[str, Any]]:
    """The newest audit rows (before id ``before``) whose actor, action, target or
    detail contains ``q`` (case-insensitive)."""
    sql = text(
        """
        SELECT id, at, actor, action, target, detail::text AS detail FROM audit_log
         WHERE (CAST(:q AS text) = '' OR actor ILIKE :like OR action ILIKE :like
                OR target ILIKE :like OR detail::text ILIKE :like)
           AND (CAST(:before AS bigint) IS NULL OR id < :before)
         ORDER BY id DESC LIMIT :limit
        """
    )
    like = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
    async with engine.connect() as conn:
        result = await conn.execute(
            sql, {"q": q, "like": like, "before": before, "limit": AUDIT_PAGE}
        )
        return [dict(r._mapping) for r in result]
