"""``relaybus dlq ls|show|replay|purge``: inspect and operate dead-letter queues."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable, Coroutine
from enum import StrEnum
from typing import Any, TypeVar

import typer
from rich.table import Table

from relaybus.audit import amend, record
from relaybus.consumers.dlq_admin import (
    BROKER_ERRORS,
    DeadLetter,
    DeadLetterError,
    DeadLetterStore,
    KafkaDeadLetters,
    RabbitDeadLetters,
    ReplayPlan,
    collect,
    plan_replay,
)
from relaybus.consumers.naming import is_dlq
from relaybus.db import create_engine, session_factory
from relaybus.settings import Settings
from relaybus.terminal import make_console, plain

app = typer.Typer(
    help="Inspect, replay and purge dead letters (replays and purges are audited).",
    no_args_is_help=True,
)
T = TypeVar("T")


class Broker(StrEnum):
    kafka = "kafka"
    rabbitmq = "rabbitmq"


BROKER_OPT = typer.Option(Broker.kafka, "--broker", help="Which broker's DLQs.")
JSON_OPT = typer.Option(False, "--json", help="Print JSON.")
YES_OPT = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation.")
NAME_ARG = typer.Argument(..., help="The DLQ: '<topic>.dlq' or '<queue>.dlq'.")


def _store(broker: Broker, settings: Settings) -> DeadLetterStore:
    if broker is Broker.kafka:
        return KafkaDeadLetters(settings.kafka)
    return RabbitDeadLetters(settings.rabbitmq, settings.rabbitmq_management)


def _run(broker: Broker, action: Callable[[DeadLetterStore], Coroutine[Any, Any, T]]) -> T:
    try:
        return asyncio.run(action(_store(broker, Settings())))
    except DeadLetterError as err:
        make_console(stderr=True).print(plain(f"relaybus dlq: {err}"))
        raise typer.Exit(1) from None
    except BROKER_ERRORS as err:
        make_console(stderr=True).print(plain(f"relaybus dlq: {broker} unreachable: {err}"))
        raise typer.Exit(1) from None


def _check_name(name: str) -> None:
    if not is_dlq(name):
        raise typer.BadParameter(f"{name!r} is not a dead-letter queue (names end in '.dlq')")


def _dump(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


async def _audit(action: str, target: str, detail: dict[str, Any]) -> int:
    engine = create_engine(Settings().database_url, pool_size=1)
    try:
        async with session_factory(engine)() as session, session.begin():
            return (await record(session, action, target, detail)).id
    finally:
        await engine.dispose()


async def _amend(entry_id: int, detail: dict[str, Any]) -> None:
    engine = create_engine(Settings().database_url, pool_size=1)
    try:
        async with session_factory(engine)() as session, session.begin():
            await amend(session, entry_id, detail)
    finally:
        await engine.dispose()


@app.command("ls")
def ls(broker: Broker = BROKER_OPT, as_json: bool = JSON_OPT) -> None:
    """List dead-letter queues and how many messages each holds.

    Example: relaybus dlq ls --broker rabbitmq --json
    """
    queues = _run(broker, lambda s: s.queues())
    if as_json:
        _dump([{"name": n, "messages": c} for n, c in queues])
        return
    table = Table(title=f"dead-letter queues ({broker})")
    table.add_column("name")
    table.add_column("messages", justify="right")
    for name, count in queues:
        table.add_row(plain(name), str(count))
    make_console().print(table)


def _selector(
    ids: list[str] | None, reason: str | None, type_: str | None
) -> Callable[[DeadLetter], bool]:
    wanted = set()
    for value in ids or []:
        try:
            wanted.add(str(uuid.UUID(value)))
        except ValueError:
            raise typer.BadParameter(f"{value!r} is not a message id (a UUID)") from None

    def select(letter: DeadLetter) -> bool:
        return (
            (not wanted or letter.id in wanted)
            and (reason is None or reason in letter.reason)
            and (type_ is None or letter.type == type_)
        )

    return select


@app.command()
def show(
    name: str = NAME_ARG,
    broker: Broker = BROKER_OPT,
    ids: list[str] = typer.Option(None, "--id", help="Only these message ids."),
    limit: int = typer.Option(100, "--limit", min=1),
    as_json: bool = JSON_OPT,
) -> None:
    """Show dead letters: reason, exception, attempts, origin (bodies with --json).

    Example: relaybus dlq show outbox.event.order.dlq --limit 10
    """
    _check_name(name)
    select = _selector(ids, None, None)
    letters = _run(broker, lambda s: collect(s, name, limit, select))
    if as_json:
        _dump([d.summary() for d in letters])
        return
    table = Table(title=plain(f"{name} ({len(letters)} shown)"))
    for col in ("id", "type", "reason", "exception", "attempts", "consumer", "original", "at"):
        table.add_column(col, overflow="fold")
    for d in letters:
        table.add_row(
            *(
                plain(v)
                for v in (
                    d.id,
                    d.type,
                    d.reason,
                    d.exception[:100],
                    d.attempts,
                    d.consumer,
                    f"{d.original} {d.position}".strip(),
                    d.failed_at,
                )
            )
        )
    make_console().print(table)


def _print_plan(plan: ReplayPlan) -> None:
    console = make_console()
    table = Table(title=plain(f"replay plan for {plan.dlq}"))
    for col in ("id", "position", "to", "status"):
        table.add_column(col, overflow="fold")
    for ref, id_ in plan.accepted:
        table.add_row(plain(id_ or "(no id)"), plain(ref), plain(plan.target), "send")
    for ref, id_, origin in plan.refused:
        status = plain(f"refused: recorded origin {origin!r} is not {plan.dlq!r}'s source")
        table.add_row(plain(id_ or "(no id)"), plain(ref), "-", status)
    console.print(table)


@app.command()
def replay(
    name: str = NAME_ARG,
    broker: Broker = BROKER_OPT,
    ids: list[str] = typer.Option(None, "--id", help="Only these message ids."),
    reason: str = typer.Option(None, "--reason", help="Only letters whose reason contains this."),
    type_: str = typer.Option(None, "--type", help="Only letters of this message type."),
    to: str = typer.Option(
        None, "--to", help="Send to this topic/queue instead of the DLQ's own source."
    ),
    yes: bool = YES_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Send dead letters back to where the DLQ's name says they came from, same id and
    headers: NAME.dlq goes to NAME, or to --to if given.

    Nothing in a letter picks its destination: a letter whose recorded origin
    (x-original-topic) is not NAME's source is refused and listed. The plan (every
    id and target) is shown before anything is sent, and written to the audit log.
    With neither --id, --reason nor --type, every letter is replayed. Consumers with
    an inbox apply each message at most once, however often it is replayed. On
    RabbitMQ replayed letters leave the DLQ; a Kafka DLQ is a log (see purge).

    Example: relaybus dlq replay orders.dlq --broker rabbitmq --reason max-attempts --yes
    """
    _check_name(name)
    if to is not None and (not to.strip() or is_dlq(to) or to != to.strip()):
        raise typer.BadParameter(f"--to {to!r}: give a topic or queue name (not a DLQ)")
    select = _selector(ids, reason, type_)
    plan = _run(broker, lambda s: plan_replay(s, name, select, to))
    if not as_json:
        _print_plan(plan)
    if not plan.accepted:
        if as_json:
            _dump(plan.audit_detail(str(broker), [], reason, type_))
        else:
            make_console().print("nothing to replay")
        raise typer.Exit(1 if plan.refused else 0)
    question = f"Send {len(plan.accepted)} letters from {name} to {plan.target} ({broker})?"
    if not yes and not typer.confirm(question):
        raise typer.Exit(1)
    # Recorded before sending (what is about to go), completed after: the replayed
    # messages' spans name this row.
    planned = {**plan.audit_detail(str(broker), [], reason, type_), "state": "sending"}
    plan.audit_id = asyncio.run(_audit("dlq.replay", name, planned))
    sent = _run(broker, lambda s: s.replay(plan))
    detail = plan.audit_detail(str(broker), sent, reason, type_)
    asyncio.run(_amend(plan.audit_id, detail))
    if as_json:
        _dump(detail)
    else:
        make_console().print(
            plain(f"replayed {len(sent)} dead letters from {name} to {plan.target}")
        )


@app.command()
def purge(name: str = NAME_ARG, broker: Broker = BROKER_OPT, yes: bool = YES_OPT) -> None:
    """Delete every dead letter in NAME.

    Example: relaybus dlq purge outbox.event.order.dlq --yes
    """
    _check_name(name)
    if not yes and not typer.confirm(f"Delete all dead letters in {name} ({broker})?"):
        raise typer.Exit(1)
    purged = _run(broker, lambda s: s.purge(name))
    asyncio.run(_audit("dlq.purge", name, {"broker": str(broker), "purged": purged}))
    make_console().print(plain(f"purged {purged} dead letters from {name}"))
