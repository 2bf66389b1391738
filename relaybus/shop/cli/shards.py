"""``relaybus shards show|set``: the inventory shard set the router routes by."""

from __future__ import annotations

import json

import typer
from rich.table import Table
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybus.audit import record
from relaybus.db import session_factory
from relaybus.db.on_database import run_on_database
from relaybus.shop.settings import ShopSettings
from relaybus.shop.streams.sharding.directory import ShardDirectory
from relaybus.terminal import make_console, plain

app = typer.Typer(
    help="The inventory shards: show the epochs, change the set (audited).",
    no_args_is_help=True,
)


@app.command("show")
def show(as_json: bool = typer.Option(False, "--json", help="Print JSON.")) -> None:
    """The shard epochs, newest first: shards, vnodes, when published and activated.

    Example: relaybus shards show
    """

    async def epochs(engine: AsyncEngine) -> list[dict[str, object]]:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT epoch, shards, vnodes, created_at, activated_at, note "
                    "FROM inventory.shard_epochs ORDER BY epoch DESC LIMIT 20"
                )
            )
            return [
                {
                    "epoch": r.epoch,
                    "shards": list(r.shards),
                    "vnodes": r.vnodes,
                    "published": r.created_at.isoformat(),
                    "activated": r.activated_at.isoformat() if r.activated_at else None,
                    "note": r.note,
                }
                for r in rows
            ]

    found = run_on_database("shards", epochs)
    if as_json:
        typer.echo(json.dumps(found, indent=2))
        return
    table = Table("epoch", "shards", "vnodes", "published", "activated", "note")
    for e in found:
        table.add_row(
            str(e["epoch"]),
            " ".join(str(s) for s in e["shards"]),  # type: ignore[attr-defined]
            str(e["vnodes"]),
            str(e["published"]),
            str(e["activated"] or "not yet"),
            plain(e["note"] or ""),  # an operator's text: never markup
        )
    make_console().print(table)


@app.command("set")
def set_shards(
    shards: list[int] = typer.Argument(..., help="Shard numbers, e.g. 0 1 2."),
    vnodes: int | None = typer.Option(None, "--vnodes", min=1, help="Virtual nodes per shard."),
    note: str = typer.Option("", "--note", help="Why (kept with the epoch and the audit row)."),
) -> None:
    """Publish a new shard set (a new epoch; nothing happens if it is the current set).
    The router drains every shard, then routes
    by it; only the products the ring moves change shard. Start a worker for each new
    shard (``RELAYBUS_INVENTORY_SHARD=N relaybus worker inventory``) and keep a removed
    shard's worker until the router logs the switch.

    Example: relaybus shards set 0 1 2 --note "more capacity for the sale"
    """
    if any(shard < 0 for shard in shards):
        raise typer.BadParameter("shard numbers start at 0", param_hint="SHARDS")
    if len(shards) > 256:
        raise typer.BadParameter("at most 256 shards", param_hint="SHARDS")
    ring_vnodes = vnodes or ShopSettings().inventory_vnodes

    async def publish(engine: AsyncEngine) -> tuple[int, bool]:
        async with session_factory(engine)() as session, session.begin():
            directory = ShardDirectory()
            before = await directory.latest(session)
            epoch = await directory.ensure(
                session, shards, ring_vnodes, note or "relaybus shards set"
            )
            if before is not None and before.epoch == epoch.epoch:
                return epoch.epoch, False
            await record(
                session,
                "shards.set",
                f"epoch {epoch.epoch}",
                {"shards": list(epoch.shards), "vnodes": ring_vnodes, "note": note},
            )
            return epoch.epoch, True

    epoch, changed = run_on_database("shards", publish)
    what = "published" if changed else "unchanged (already current)"
    make_console().print(
        f"epoch {epoch} {what}: shards {sorted(set(shards))}, {ring_vnodes} vnodes"
    )
