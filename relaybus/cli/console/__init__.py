"""``relaybus console``: the web console over the outbox, dead letters, lag and audit."""

from __future__ import annotations

import getpass
import logging
import sys

import typer
import uvicorn

from relaybus.cli.console.app import create_app
from relaybus.cli.console.auth import BadPasswordHash, PasswordHash, hash_password
from relaybus.cli.console.guard import allowed_hosts
from relaybus.client_address import uvicorn_proxy_options
from relaybus.settings import Settings
from relaybus.terminal import make_console, plain

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def console(
    host: str = typer.Option(None, "--host", help="Bind address (default: settings, loopback)."),
    port: int = typer.Option(None, "--port", min=1, max=65535, help="Port (default: 8470)."),
    hash_only: bool = typer.Option(
        False, "--hash-password", help="Read a password (stdin or prompt), print its hash, exit."
    ),
) -> None:
    """Run the web console: outbox backlog and failed rows (retry / skip), dead
    letters per DLQ (filter, replay, purge), consumer lag, relay and worker health,
    and the audit log. Every page and action needs a signed-in session; every action
    is audited with the user's name.

    The password is given to the console only as a hash, in
    RELAYBUS_CONSOLE_PASSWORD_HASH (make it with --hash-password); there is no
    default password.

    Example: relaybus console --port 8470
    """
    if hash_only:
        typer.echo(hash_password(_read_password()))
        return
    settings = Settings()
    err = make_console(stderr=True)
    if not (settings.console_password_hash and settings.console_password_hash.get_secret_value()):
        err.print(
            "relaybus console: set RELAYBUS_CONSOLE_PASSWORD_HASH first "
            "(make one with: relaybus console --hash-password)"
        )
        raise typer.Exit(2)
    try:
        password = PasswordHash.parse(settings.console_password_hash.get_secret_value())
    except BadPasswordHash as problem:
        err.print(plain(f"relaybus console: RELAYBUS_CONSOLE_PASSWORD_HASH: {problem}"))
        raise typer.Exit(2) from None
    bind_host = host or settings.console_host
    bind_port = port or settings.console_port
    tls = bool(settings.console_tls_certfile and settings.console_tls_keyfile)
    if bind_host not in LOOPBACK:
        if not tls and not (settings.console_behind_proxy and settings.trusted_proxies):
            err.print(
                plain(
                    f"relaybus console: {bind_host} is reachable from other machines: serve "
                    "HTTPS (RELAYBUS_CONSOLE_TLS_CERTFILE and _KEYFILE) or, behind a proxy "
                    "that terminates TLS, set RELAYBUS_CONSOLE_BEHIND_PROXY=true and name it "
                    "in RELAYBUS_TRUSTED_PROXIES"
                )
            )
            raise typer.Exit(2)
        err.print(plain(f"relaybus console: listening on {bind_host}, not only this machine"))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    scheme = "https" if tls else "http"
    err.print(
        plain(
            f"relaybus console on {scheme}://{bind_host}:{bind_port}/ "
            f"(user {settings.console_user})"
        )
    )
    hosts = allowed_hosts(bind_host, bind_port, settings.console_allowed_hosts)
    uvicorn.run(
        create_app(settings, password, hosts=hosts),
        host=bind_host,
        port=bind_port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
        ssl_certfile=settings.console_tls_certfile if tls else None,
        ssl_keyfile=settings.console_tls_keyfile if tls else None,
        **uvicorn_proxy_options(settings.trusted_proxies),
    )


def _read_password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("password: ")
        if first != getpass.getpass("again: "):
            raise typer.BadParameter("the two passwords differ", param_hint="--hash-password")
    else:
        first = sys.stdin.readline().rstrip("\n")
    if len(first) < 12:
        raise typer.BadParameter("use at least 12 characters", param_hint="--hash-password")
    return first
