"""``relaybus serve NAME``: run one of the shop's HTTP services with uvicorn."""

from __future__ import annotations

import logging

import typer
import uvicorn
from fastapi import FastAPI

from relaybus.client_address import uvicorn_proxy_options
from relaybus.settings import Settings
from relaybus.shop.producers.orders.api import create_app
from relaybus.shop.producers.payments.gateway import create_gateway
from relaybus.shop.settings import ShopSettings

SERVICES = ("orders-api", "gateway")


def serve(
    name: str = typer.Argument(..., help=f"The service: {', '.join(SERVICES)}."),
    host: str = typer.Option("", help="Bind address (default: the service's setting, loopback)."),
    port: int = typer.Option(0, min=0, max=65535, help="Port (default: the service's setting)."),
) -> None:
    """Run an HTTP service of the shop until SIGTERM.

    orders-api: POST /orders, GET /orders/{id}, OpenAPI at /docs
    (RELAYBUS_ORDERS_API_HOST / _PORT, default 127.0.0.1:8080).
    gateway: the simulated payment gateway (RELAYBUS_GATEWAY_*, default 127.0.0.1:8090).

    Example: relaybus serve orders-api --port 8080
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    settings, shop = Settings(), ShopSettings()
    app: FastAPI
    if name == "orders-api":
        app = create_app(settings, shop)
        default_host, default_port = shop.orders_api_host, shop.orders_api_port
    elif name == "gateway":
        app = create_gateway(shop)
        default_host, default_port = shop.gateway_host, shop.gateway_port
    else:
        raise typer.BadParameter(
            f"unknown service {name!r}: use one of {', '.join(SERVICES)}", param_hint="NAME"
        )
    uvicorn.run(
        app,
        host=host or default_host,
        port=port or default_port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=10,
        # X-Forwarded-For is believed only from RELAYBUS_TRUSTED_PROXIES (default none).
        **uvicorn_proxy_options(settings.trusted_proxies),
    )
