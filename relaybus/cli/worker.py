"""``relaybus worker NAME``: run a consumer app until SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import signal

import typer

from relaybus.consumers.app import ConsumerApp
from relaybus.consumers.inbox import Inbox
from relaybus.consumers.metrics import WorkerMetrics
from relaybus.consumers.worker import Worker, WorkerNotFound, load_app
from relaybus.settings import Settings

log = logging.getLogger(__name__)


async def run_worker(app: ConsumerApp, settings: Settings) -> None:
    """Run ``app`` until SIGTERM/SIGINT; then finish in-flight messages. Serves
    Prometheus ``/metrics`` when ``worker_metrics_port`` is set."""
    metrics = WorkerMetrics()
    if settings.worker_metrics_port:
        metrics.serve(settings.worker_metrics_port, settings.worker_metrics_host)
    worker = Worker(app, settings, metrics)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    purge = asyncio.create_task(_purge_inbox(worker, settings, stop))
    log.info("worker %s started: %d handlers", app.name, len(app.handlers))
    try:
        await worker.run(stop)
    finally:
        purge.cancel()
        await asyncio.gather(purge, return_exceptions=True)
    log.info("worker %s stopped", app.name)


async def _purge_inbox(worker: Worker, settings: Settings, stop: asyncio.Event) -> None:
    """Inbox retention: rows older than ``RELAYBUS_INBOX_RETENTION_DAYS`` go, hourly."""
    if worker.engine is None:
        return
    while not stop.is_set():
        try:
            purged = await Inbox().purge(worker.engine, settings.inbox_retention_days)
            if purged:
                log.info("inbox: purged %d rows", purged)
        except Exception as err:  # retention is housekeeping: never stop the worker
            log.warning("inbox purge failed: %r", err)
        try:
            await asyncio.wait_for(stop.wait(), 3600)
        except TimeoutError:
            continue


def worker(
    name: str = typer.Argument(
        ..., help="module:attribute, or a name an installed package registers (orders, …)."
    ),
    metrics_port: int = typer.Option(
        -1, "--metrics-port", help="Prometheus /metrics port (0 = off; default: settings)."
    ),
) -> None:
    """Run a consumer app: each handler on its Kafka topic / RabbitMQ queue.

    SIGTERM stops consuming, finishes and commits what is in hand, and exits 0.

    Example: relaybus worker myservice.consumers:app
    """
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        app = load_app(name)
    except WorkerNotFound as err:
        raise typer.BadParameter(str(err), param_hint="NAME") from None
    settings = Settings()
    if metrics_port >= 0:
        settings = settings.model_copy(update={"worker_metrics_port": metrics_port})
    asyncio.run(run_worker(app, settings))
