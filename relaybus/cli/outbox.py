"""``relaybus outbox status|ls|show|retry|skip|purge``: operate the outbox."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import Any, TypeVar

import typer
from rich.markup import escape
from rich.table import Table

from relaybus.db import create_engine
from relaybus.outbox.admin import OutboxAdmin, OutboxStatus, SlotStatus, StallStatus
from relaybus.settings import Settings
from relaybus.terminal import make_console, plain, safe_text

app = typer.Typer(
    help="Inspect and operate the outbox (all changes are audited).", no_args_is_help=True
)
T = TypeVar("T")

JSON_OPT = typer.Option(False, "--json", help="Print JSON.")
YES_OPT = typer.Option(False, "--yes", "-y", help="Do not ask for confirmation.")


def _run(action: Callable[[OutboxAdmin], Awaitable[T]]) -> T:
    async def main() -> T:
        engine = create_engine(Settings().database_url, pool_size=2)
        try:
            return await action(OutboxAdmin(engine))
        finally:
            await engine.dispose()

    try:
        return asyncio.run(main())
    except OSError as err:
        make_console(stderr=True).print(f"relaybus outbox: database unreachable: {err}")
        raise typer.Exit(1) from None


def _ids(values: list[str]) -> list[uuid.UUID]:
    try:
        return [uuid.UUID(v) for v in values]
    except ValueError:
        bad = next(v for v in values if not _is_uuid(v))
        raise typer.BadParameter(f"{bad!r} is not a message id (a UUID)") from None


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


def _dump(obj: Any) -> None:
    typer.echo(json.dumps(obj, indent=2, default=str))


@app.command()
def status(as_json: bool = JSON_OPT) -> None:
    """Pending and failed counts, oldest pending age, archive counts (the published
    count is PostgreSQL's estimate: the same cost at any archive size), and each
    logical replication slot's lag (WAL relay, Debezium); a slot without a consumer
    for longer than RELAYBUS_OUTBOX_SLOT_STALE_AFTER seconds is reported in red.
    Destinations the relays report stalled (a Kafka partition whose leader does not
    acknowledge: which partition, since when, which broker node) are listed, and
    warned about on stderr.

    Example: relaybus outbox status --json
    """
    stale_after = Settings().outbox_slot_stale_after

    async def read(a: OutboxAdmin) -> tuple[OutboxStatus, list[SlotStatus], list[StallStatus]]:
        return await a.status(), await a.slots(stale_after), await a.stalls()

    st, slots, stalls = _run(read)
    if as_json:
        _dump(
            {
                **asdict(st),
                "slots": [asdict(s) for s in slots],
                "stalls": [asdict(s) for s in stalls],
            }
        )
        _warn_stale(slots, stale_after)
        _warn_stalls(stalls)
        return
    table = Table(title="outbox")
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("pending", str(st.pending))
    table.add_row("failed", str(st.failed))
    table.add_row("oldest pending age (s)", f"{st.oldest_pending_age_s:.1f}")
    for outcome, n in sorted(st.archived.items()):
        estimate = ", estimate" if outcome in st.archived_estimated else ""
        table.add_row(f"archived ({outcome}{estimate})", ("≈" if estimate else "") + str(n))
    make_console().print(table)
    if slots:
        _print_slots(slots)
    if stalls:
        _print_stalls(stalls)
    _warn_stale(slots, stale_after)
    _warn_stalls(stalls)


def _print_stalls(stalls: list[StallStatus]) -> None:
    table = Table(title="stalled destinations (their rows wait; the rest flow)")
    for col in ("broker", "destination", "waiting on", "for (s)", "unanswered", "relay"):
        table.add_column(col)
    for s in stalls:
        relay = s.instance if s.reported_s_ago < 60 else f"{s.instance} (gone?)"
        table.add_row(
            plain(s.broker),
            plain(s.destination),
            plain(s.leader),
            f"{s.seconds:.1f}",
            str(s.waiting),
            plain(relay),
        )
    make_console().print(table)


def _warn_stalls(stalls: list[StallStatus]) -> None:
    console = make_console(stderr=True)
    for s in stalls:
        console.print(
            f"[bold red]WARNING: {escape(safe_text(s.broker))} {escape(safe_text(s.destination))} "
            f"has not acknowledged for {s.seconds:.0f}s (waiting on "
            f"{escape(safe_text(s.leader))}); its keys' rows wait."
            "[/bold red]",
            highlight=False,
        )


def _print_slots(slots: list[SlotStatus]) -> None:
    table = Table(title="replication slots")
    for col in ("slot", "plugin", "consumer", "lag", "lag (s)", "WAL retained", "wal_status"):
        table.add_column(col)
    for s in slots:
        consumer = "streaming" if s.active else f"[red]none[/red] ({_age(s.idle_seconds)})"
        table.add_row(
            s.slot_name,
            s.plugin,
            consumer,
            _mb(s.lag_bytes),
            "-" if s.lag_seconds is None else f"{s.lag_seconds:.1f}",
            _mb(s.retained_bytes),
            s.wal_status,
        )
    make_console().print(table)


def _warn_stale(slots: list[SlotStatus], stale_after: float) -> None:
    """Loud, on stderr (so ``--json`` output stays parseable): a slot nobody streams
    keeps every WAL segment written since, until the disk fills or
    ``max_slot_wal_keep_size`` invalidates it."""
    console = make_console(stderr=True)
    for s in slots:
        if s.stale:
            console.print(
                f"[bold red]WARNING: replication slot {s.slot_name} has had no consumer for "
                f"{_age(s.idle_seconds)} (over {stale_after:.0f}s) and retains "
                f"{_mb(s.retained_bytes)} of WAL.[/bold red] Start its relay "
                f"(relaybus relay --source wal) or Kafka Connect, or drop it: "
                f"SELECT pg_drop_replication_slot('{s.slot_name}');",
                highlight=False,
            )


def _age(seconds: float | None) -> str:
    return "an unknown time" if seconds is None else f"{seconds:.0f}s"


def _mb(n: int) -> str:
    return f"{n / 1_048_576:.1f} MB"


@app.command("ls")
def ls(
    status: str = typer.Option(None, "--status", help="pending or failed (default: both)."),
    limit: int = typer.Option(50, "--limit", min=1),
    as_json: bool = JSON_OPT,
) -> None:
    """List outbox rows in sequence order.

    Example: relaybus outbox ls --status failed
    """
    if status not in (None, "pending", "failed"):
        raise typer.BadParameter("--status must be 'pending' or 'failed'")
    rows = _run(lambda a: a.rows(status, limit))
    if as_json:
        _dump(rows)
        return
    table = Table(title=f"outbox rows ({status or 'all'})")
    for col in ("id", "type", "aggregateid", "p", "seq", "status", "attempts", "last_error"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(
            str(r["id"]),
            r["type"],
            r["aggregateid"],
            str(r["partition"]),
            str(r["sequence"]),
            r["status"],
            str(r["attempts"]),
            (r["last_error"] or "")[:120],
        )
    make_console().print(table)


@app.command()
def show(message_id: str = typer.Argument(..., metavar="ID"), as_json: bool = JSON_OPT) -> None:
    """Show one row (hot table or archive) with payload and headers.

    Example: relaybus outbox show 0190f2c4-...
    """
    (mid,) = _ids([message_id])
    row = _run(lambda a: a.show(mid))
    if row is None:
        make_console(stderr=True).print(f"relaybus outbox: no row with id {message_id}")
        raise typer.Exit(1)
    if as_json:
        _dump(row)
    else:
        for k, v in row.items():
            typer.echo(f"{k:>16}: {v}")


@app.command()
def retry(
    ids: list[str] = typer.Argument(None, metavar="[ID]...", help="Failed rows to retry."),
    all_failed: bool = typer.Option(False, "--all-failed", help="Retry every failed row."),
    yes: bool = YES_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Put failed rows back to pending so the relay tries them again.

    Example: relaybus outbox retry --all-failed --yes
    """
    if not ids and not all_failed:
        raise typer.BadParameter("name row ids or pass --all-failed")
    targets = None if all_failed else _ids(ids)
    if not yes:
        what = "every failed row" if targets is None else f"{len(targets)} row(s)"
        typer.confirm(f"Retry {what}?", abort=True)
    n = _run(lambda a: a.retry(targets))
    _dump({"retried": n}) if as_json else typer.echo(f"retried {n} row(s)")


@app.command()
def skip(
    ids: list[str] = typer.Argument(..., metavar="ID...", help="Failed rows to skip."),
    yes: bool = YES_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Move failed rows to the archive as 'skipped' (never published); their key flows on.

    Example: relaybus outbox skip 0190f2c4-... --yes
    """
    targets = _ids(ids)
    if not yes:
        typer.confirm(f"Skip {len(targets)} row(s)? They will never be published.", abort=True)
    n = _run(lambda a: a.skip(targets))
    _dump({"skipped": n}) if as_json else typer.echo(f"skipped {n} row(s)")


@app.command()
def purge(
    older_than: float = typer.Option(7.0, "--older-than", min=0, help="Days."),
    yes: bool = YES_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Delete archived rows older than --older-than days.

    Example: relaybus outbox purge --older-than 30 --yes
    """
    if not yes:
        typer.confirm(f"Delete archived rows older than {older_than} days?", abort=True)
    n = _run(lambda a: a.purge(older_than))
    _dump({"purged": n}) if as_json else typer.echo(f"purged {n} archived row(s)")
