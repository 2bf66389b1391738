"""``relaybus keys issue|revoke|ls``: the orders API's per-customer API keys."""

from __future__ import annotations

import json

import typer
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncEngine

from relaybus.audit import record
from relaybus.db import session_factory
from relaybus.db.on_database import run_on_database
from relaybus.shop.producers.orders.credentials import IssuedKey, issue_key, list_keys, revoke_key
from relaybus.terminal import make_console, plain

app = typer.Typer(
    help="API keys of the orders API: issue one per customer, revoke, list (audited).",
    no_args_is_help=True,
)


@app.command("issue")
def issue(
    customer: str = typer.Argument(..., help="The customer id the key orders for."),
    vip: bool = typer.Option(False, "--vip", help="Exempt this customer from admission limits."),
) -> None:
    """Issue an API key: the key is printed once, on standard output, and only its
    hash is kept. Clients send it as ``Authorization: Bearer <key>``.

    Example: relaybus keys issue alice --vip > alice.key
    """
    if not 1 <= len(customer) <= 128 or not customer.isprintable():
        raise typer.BadParameter("1..128 printable characters", param_hint="CUSTOMER")

    async def make(engine: AsyncEngine) -> IssuedKey:
        async with session_factory(engine)() as session, session.begin():
            issued = await issue_key(session, customer, vip=vip)
            await record(session, "keys.issue", issued.key_id, {"customer": customer, "vip": vip})
            return issued

    issued = run_on_database("keys", make)
    make_console(stderr=True).print(
        plain(f"key {issued.key_id} for {customer}{' (VIP)' if vip else ''}: shown once below")
    )
    typer.echo(issued.token)


@app.command("revoke")
def revoke(
    key_id: str = typer.Argument(..., help="The key's id (from `relaybus keys ls`)."),
) -> None:
    """Revoke a key: the API refuses it within RELAYBUS_ORDERS_API_KEY_CACHE_SECONDS.

    Example: relaybus keys revoke 3f2a9c1d0b7e6a54
    """

    async def drop(engine: AsyncEngine) -> str | None:
        async with session_factory(engine)() as session, session.begin():
            customer = await revoke_key(session, key_id[:64])
            if customer is not None:
                await record(session, "keys.revoke", key_id, {"customer": customer})
            return customer

    customer = run_on_database("keys", drop)
    if customer is None:
        make_console(stderr=True).print(plain(f"relaybus keys: no live key {key_id[:64]!r}"))
        raise typer.Exit(1)
    make_console().print(plain(f"revoked key {key_id} of {customer}"))


@app.command("ls")
def ls(
    customer: str = typer.Option(None, "--customer", help="Only this customer's keys."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """The newest 200 keys: id, customer, VIP, created, revoked (never a secret).

    Example: relaybus keys ls --customer alice
    """

    async def rows(engine: AsyncEngine) -> list[dict[str, object]]:
        async with session_factory(engine)() as session:
            return await list_keys(session, customer)

    found = run_on_database("keys", rows)
    if as_json:
        typer.echo(json.dumps(found, indent=2))
        return
    table = Table("key id", "customer", "vip", "created", "revoked")
    for k in found:
        table.add_row(
            str(k["key_id"]),
            plain(str(k["customer"])),
            "yes" if k["vip"] else "",
            str(k["created_at"]),
            str(k["revoked_at"] or ""),
        )
    make_console().print(table)
