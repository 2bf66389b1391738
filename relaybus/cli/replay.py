"""``relaybus replay``: a topic's records in a time window, replayed by resetting a
consumer group, by copying them into a topic (optionally as new messages), or, for
RabbitMQ, by republishing the window from the outbox archive. Every change is
audited; a group reset can be undone from its audit row."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Coroutine
from dataclasses import asdict
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, NoReturn, TypeVar

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from relaybus.audit import AuditEntry, find, latest, record
from relaybus.brokers.kafka_admin import PartitionWindow, group_offsets, time_window
from relaybus.brokers.kafka_replay import (
    CopiedSet,
    CopyFilter,
    CopyResult,
    GroupBusyError,
    already_copied,
    copy_window,
    destination_ends,
    reprocess_ids,
    reset_group,
    traced_copies,
)
from relaybus.cli.replay_archive import replay_from_archive
from relaybus.cli.replay_shadow import run_shadow, show_shadow
from relaybus.cli.timespec import parse_instant
from relaybus.db import create_engine, session_factory
from relaybus.settings import Settings
from relaybus.terminal import make_console, plain

T = TypeVar("T")
RESET = "replay.group-reset"
COPY_ACTIONS = ("replay.copy", "replay.reprocess")


class Broker(StrEnum):
    kafka = "kafka"
    rabbitmq = "rabbitmq"


def replay(
    topic: str = typer.Argument(
        None, help="The Kafka topic (or, with --broker rabbitmq, the relay's exchange)."
    ),
    since: str = typer.Option(None, "--since", help="Start of the window (ISO-8601 or 15m, 2h…)."),
    until: str = typer.Option(None, "--until", help="End of the window, exclusive (default: now)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Only show the window; change nothing."),
    group: str = typer.Option(None, "--group", help="Reset this consumer group to the window."),
    to_topic: str = typer.Option(None, "--to-topic", help="Copy the window into this topic."),
    type_: str = typer.Option(None, "--type", help="Copy only this event type."),
    key: str = typer.Option(None, "--key", help="Copy only records with this key."),
    reprocess: bool = typer.Option(
        False, "--reprocess", help="Copies are new messages (new ids, x-replay-of): applied again."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Finish the last interrupted copy TOPIC -> --to-topic."
    ),
    rate: float = typer.Option(None, "--rate", min=1, help="At most this many records/s."),
    undo: int = typer.Option(None, "--undo", help="Undo the group reset of this audit row."),
    broker: Broker = typer.Option(Broker.kafka, "--broker", help="Which broker's messages."),
    shadow: str = typer.Option(
        None,
        "--shadow",
        help="module:attribute of a ConsumerApp: run the window through its handlers, "
        "rolled back, invisible to the live system; exit 1 if they fail what the live "
        "consumer applied.",
    ),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Replay the records of TOPIC whose timestamps fall in [--since, --until).

    \b
    --dry-run      per partition: offsets, count, first/last timestamps
    --group G      reset group G (no live members) to the window's start;
                   inboxes skip what was applied (same ids); --undo AUDIT_ID
    --to-topic T2  copy the window: keys, headers, ids, per-partition order,
                   plus x-replay-of; --type/--key filter, --resume finishes
    --reprocess    copies get new ids: consumers apply them again (audited)
    --broker rabbitmq  republish from the outbox archive, same ids
    --shadow APP   the window through APP's handlers in rolled-back
                   transactions (nothing published, committed or acked);
                   outcomes per type vs the live inbox and DLQ (deploy gate)

    \b
    Example: relaybus replay shop.order.admitted --since 2h --until 1h --dry-run
    Example: relaybus replay shop.order.admitted --since 2h --group orders
    Example: relaybus replay outbox.event.order --since 15m --to-topic order.copy
    Example: relaybus replay --undo 42
    Example: relaybus replay outbox.event.order --since 1d --shadow new_code.workers:app
    """
    now = datetime.now(UTC)
    if undo is not None:
        _only(undo_=undo, since=since, group=group, to_topic=to_topic, resume=resume)
        _out(as_json, _undo(undo, yes))
        return
    if topic is None:
        _usage("give the topic to replay (or --undo AUDIT_ID)", "TOPIC")
    filters = CopyFilter(type_, key)
    if shadow is not None:
        if group or to_topic or resume or reprocess or dry_run or type_ or key or rate:
            _usage("--shadow only runs the window through handlers: drop the other actions",
                   "--shadow")  # fmt: skip
        start, end = _window(since, until, now)
        report = _guard(lambda: run_shadow(Settings(), broker.value, topic, shadow, start, end))
        show_shadow(report, as_json)
        if report.failed:
            raise typer.Exit(1)
        return
    if broker is Broker.rabbitmq:
        if group or to_topic or resume or reprocess:
            _usage("RabbitMQ replay republishes from the outbox archive only", "--broker")
        start, end = _window(since, until, now)
        _out(as_json, replay_from_archive(topic, start, end, filters, dry_run, yes, now))
        return
    if group and to_topic:
        _usage("choose one: --group resets a group, --to-topic copies", "--group")
    if (type_ or key or reprocess or resume or rate) and not to_topic:
        _usage("--type, --key, --reprocess, --resume and --rate go with --to-topic", "--to-topic")
    if to_topic == topic and not reprocess:
        _usage("a copy into the same topic needs --reprocess (same ids are skipped)", "--to-topic")
    if resume:
        if since is not None:
            _usage("--resume continues the recorded window; leave out --since", "--resume")
        _out(as_json, _guard(lambda: _resume(topic, to_topic, rate, yes)))
        return
    start, end = _window(since, until, now)
    if not dry_run and not group and not to_topic:
        _usage("say what to do: --dry-run, --group G or --to-topic T2", "--dry-run")
    settings = Settings()
    windows = _guard(lambda: time_window(settings.kafka, topic, _ms(start), _ms(end)))
    if dry_run:
        if as_json:
            _dump([{**asdict(w), "count": w.count} for w in windows])
        else:
            _print(topic, windows)
        return
    span = {"since": start.isoformat(), "until": end.isoformat() if end else None}
    if group:
        _out(as_json, _guard(lambda: _reset(topic, group, windows, span, yes)))
    else:
        _out(as_json, _guard(lambda: _copy(topic, to_topic, windows, span, filters, reprocess,
                                           rate, yes)))  # fmt: skip


def _window(since: str | None, until: str | None, now: datetime) -> tuple[datetime, datetime]:
    if since is None:
        _usage("give the start of the window", "--since")
    start = parse_instant(since, now, "--since")
    end = parse_instant(until, now, "--until") if until is not None else now
    if end <= start:
        raise typer.BadParameter("must be later than --since", param_hint="--until")
    return start, end


def _only(**given: Any) -> None:
    extra = [name for name, value in given.items() if value and name != "undo_"]
    if extra:
        _usage(f"--undo takes no other action (drop --{extra[0].replace('_', '-')})", "--undo")


def _usage(message: str, hint: str) -> NoReturn:
    raise typer.BadParameter(message, param_hint=hint)


def _guard(action: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``action``; a missing topic/group/row or a busy group is a one-line error
    (exit 2 / 1), an unreachable service too (exit 1)."""
    err_console = make_console(stderr=True)
    try:
        return asyncio.run(action())
    except LookupError as err:
        err_console.print(plain(f"relaybus replay: {err}"))
        raise typer.Exit(2) from None
    except GroupBusyError as err:
        err_console.print(plain(f"relaybus replay: refused: {err}"))
        raise typer.Exit(1) from None
    except OSError as err:
        err_console.print(plain(f"relaybus replay: unreachable: {err}"))
        raise typer.Exit(1) from None


def _confirm(yes: bool, question: str) -> None:
    if not yes and not typer.confirm(question):
        raise typer.Abort()


async def _audit(action: str, target: str, detail: dict[str, Any]) -> int:
    engine = create_engine(Settings().database_url, pool_size=1)
    try:
        async with session_factory(engine)() as session, session.begin():
            return (await record(session, action, target, detail)).id
    finally:
        await engine.dispose()


async def _audit_row(
    entry_id: int | None = None, actions: tuple[str, ...] = (), target: str = ""
) -> AuditEntry:
    engine = create_engine(Settings().database_url, pool_size=1)
    try:
        async with session_factory(engine)() as session:
            if entry_id is not None:
                found = await find(session, entry_id)
            else:
                found = await latest(session, actions, target)
    finally:
        await engine.dispose()
    if found is None:
        what = f"audit row {entry_id}" if entry_id is not None else f"a copy {target}"
        raise LookupError(f"there is no {what}")
    return found


async def _reset(
    topic: str, group: str, windows: list[PartitionWindow], span: dict[str, Any], yes: bool
) -> dict[str, Any]:
    bootstrap = Settings().kafka
    offsets = {w.partition: w.start for w in windows}
    current = await group_offsets(bootstrap, group, topic)
    _confirm(yes, f"Reset group {group!r} on {topic} from {current} to {offsets}?")
    previous = await reset_group(bootstrap, group, topic, offsets)
    detail = {"topic": topic, "group": group, **span, "offsets": offsets, "previous": previous}
    audit_id = await _audit(RESET, f"{group}@{topic}", _keys_to_text(detail))
    return {"audit_id": audit_id, **detail}


def _undo(entry_id: int, yes: bool) -> dict[str, Any]:
    async def run() -> dict[str, Any]:
        entry = await _audit_row(entry_id)
        if entry.action != RESET:
            raise LookupError(f"audit row {entry_id} is a {entry.action!r}, not a group reset")
        group, topic = str(entry.detail["group"]), str(entry.detail["topic"])
        previous = {int(p): int(o) for p, o in dict(entry.detail["previous"]).items()}
        if not previous:
            raise LookupError(f"group {group!r} had no offsets on {topic} before that reset")
        _confirm(yes, f"Put group {group!r} on {topic} back to {previous}?")
        replaced = await reset_group(Settings().kafka, group, topic, previous)
        detail = {"undoes": entry_id, "topic": topic, "group": group, "offsets": previous,
                  "replaced": replaced}  # fmt: skip
        audit_id = await _audit("replay.undo", f"{group}@{topic}", _keys_to_text(detail))
        return {"audit_id": audit_id, **detail}

    return _guard(run)


async def _copy(
    topic: str,
    to_topic: str,
    windows: list[PartitionWindow],
    span: dict[str, Any],
    filters: CopyFilter,
    reprocess: bool,
    rate: float | None,
    yes: bool,
) -> dict[str, Any]:
    bootstrap = Settings().kafka
    starts = await destination_ends(bootstrap, to_topic)
    total = sum(w.count for w in windows)
    verb = "Republish as new messages" if reprocess else "Copy"
    _confirm(yes, f"{verb} {total} records of {topic} into {to_topic}?")
    detail = {
        "topic": topic,
        "destination": to_topic,
        **span,
        "windows": {w.partition: [w.start, w.end] for w in windows},
        "destination_start": starts,
        "type": filters.type,
        "key": filters.key,
    }
    action = COPY_ACTIONS[1] if reprocess else COPY_ACTIONS[0]
    audit_id = await _audit(action, _copy_target(topic, to_topic), _keys_to_text(detail))
    result = await _run_copy(topic, to_topic, windows, starts, filters, reprocess, audit_id,
                             CopiedSet({w.partition: w for w in windows}), rate)  # fmt: skip
    await _audit("replay.copy-finished", _copy_target(topic, to_topic),
                 {"of": audit_id, **asdict(result)})  # fmt: skip
    return {"audit_id": audit_id, **asdict(result)}


async def _resume(topic: str, to_topic: str, rate: float | None, yes: bool) -> dict[str, Any]:
    target = _copy_target(topic, to_topic)
    entry = await _audit_row(actions=COPY_ACTIONS, target=target)
    detail = entry.detail
    windows = [
        PartitionWindow(int(p), int(s), int(e), None, None)
        for p, (s, e) in dict(detail["windows"]).items()
    ]
    starts = {int(p): int(o) for p, o in dict(detail["destination_start"]).items()}
    bootstrap = Settings().kafka
    done = await already_copied(bootstrap, topic, to_topic, starts, windows)
    _confirm(yes, f"Resume copy {entry.id} ({done.count()} of the window already there)?")
    await _audit("replay.resume", target, {"resumes": entry.id, "already_there": done.count()})
    filters = CopyFilter(detail.get("type"), detail.get("key"))
    reprocess = entry.action == COPY_ACTIONS[1]
    result = await _run_copy(topic, to_topic, windows, starts, filters, reprocess, entry.id,
                             done, rate)  # fmt: skip
    await _audit("replay.copy-finished", target, {"of": entry.id, **asdict(result)})
    return {"audit_id": entry.id, "resumed": True, **asdict(result)}


async def _run_copy(
    topic: str,
    to_topic: str,
    windows: list[PartitionWindow],
    starts: dict[int, int],
    filters: CopyFilter,
    reprocess: bool,
    audit_id: int,
    skip: CopiedSet,
    rate: float | None,
) -> CopyResult:
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=make_console(stderr=True),
    ) as bar:
        task = bar.add_task(f"{topic} -> {to_topic}", total=sum(w.count for w in windows))
        return await copy_window(
            Settings().kafka,
            topic,
            windows,
            to_topic,
            keep_partitions=sorted(starts) == sorted(w.partition for w in windows),
            select=filters,
            skip=skip,
            rewrite=traced_copies(
                reprocess_ids(str(audit_id)) if reprocess else None,
                action=COPY_ACTIONS[1] if reprocess else COPY_ACTIONS[0],
                destination=to_topic,
                audit_id=audit_id,
            ),
            # A reprocessed copy is a new message: stamped now, so it is not found
            # again in the original's time window.
            keep_timestamps=not reprocess,
            rate=rate,
            progress=lambda n: bar.advance(task, n),
        )


def _copy_target(topic: str, to_topic: str) -> str:
    return f"{topic} -> {to_topic}"


def _keys_to_text(detail: dict[str, Any]) -> dict[str, Any]:
    """JSON objects have text keys: partition numbers become strings in the audit row."""
    return json.loads(json.dumps(detail))  # type: ignore[no-any-return]


def _out(as_json: bool, result: dict[str, Any]) -> None:
    if as_json:
        _dump(result)
        return
    table = Table(show_header=False, title="replay")
    for name, value in result.items():
        table.add_row(name, plain(value if not isinstance(value, dict) else json.dumps(value)))
    make_console().print(table)


def _dump(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


def _ms(when: datetime) -> int:
    return int(when.timestamp() * 1000)


def _time(ms: int | None) -> str:
    if ms is None:
        return ""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds")


def _print(topic: str, windows: list[PartitionWindow]) -> None:
    table = Table(title=f"{topic}: records in the window (dry run: nothing changed)")
    for column in ("partition", "start", "end", "count", "first", "last"):
        table.add_column(column, justify="right" if column not in ("first", "last") else "left")
    for w in windows:
        table.add_row(
            str(w.partition),
            str(w.start),
            str(w.end),
            str(w.count),
            _time(w.first_timestamp),
            _time(w.last_timestamp),
        )
    table.add_row("all", "", "", str(sum(w.count for w in windows)), "", "")
    make_console().print(table)
