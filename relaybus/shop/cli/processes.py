"""The shop's processes as children of one supervisor (``relaybus run``, ``relaybus demo``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from relaybus.shop.settings import ShopSettings

# name -> relaybus sub-command. One relay, the two HTTP services, the workers, the
# saga and the stream processors; plus one inventory worker per shard
# (``inventory-shard-<n>``, see ``command_of``): every process of the reference shop.
SHOP_PROCESSES: dict[str, list[str]] = {
    "relay": ["relay"],
    "gateway": ["serve", "gateway"],
    "orders-api": ["serve", "orders-api"],
    "orders": ["worker", "orders"],
    "payments": ["worker", "payments"],
    "saga": ["stream", "saga"],
    "admission": ["stream", "admission"],
    "router": ["stream", "router"],
    "order-status": ["stream", "order-status"],
}
# Not started by default: the inventory worker on the unsharded topic (no router).
OPTIONAL_PROCESSES: dict[str, list[str]] = {"inventory": ["worker", "inventory"]}
SHARD_PROCESS = "inventory-shard-"


API_REPLICA = "orders-api-"


def default_names(shop: ShopSettings) -> list[str]:
    """Every process of the shop: the fixed ones, the orders API's further replicas
    and a worker per configured shard."""
    return [
        *SHOP_PROCESSES,
        *(f"{API_REPLICA}{n}" for n in range(1, shop.orders_api_replicas)),
        *(f"{SHARD_PROCESS}{n}" for n in sorted(set(shop.inventory_shards))),
    ]


def command_of(name: str, shop: ShopSettings) -> tuple[list[str], dict[str, str]]:
    """The ``relaybus`` argv and extra environment of the process ``name``; raises
    ``KeyError`` for a name that is not a shop process."""
    if name in SHOP_PROCESSES:
        return SHOP_PROCESSES[name], {}
    if name in OPTIONAL_PROCESSES:
        return OPTIONAL_PROCESSES[name], {}
    shard = name.removeprefix(SHARD_PROCESS)
    if name.startswith(SHARD_PROCESS) and shard.isdigit() and int(shard) < 4096:
        return ["worker", "inventory"], {"RELAYBUS_INVENTORY_SHARD": str(int(shard))}
    replica = name.removeprefix(API_REPLICA)
    if name.startswith(API_REPLICA) and replica.isdigit() and 0 < int(replica) < 16:
        # Replica n listens on orders_api_port + n; the rest of its settings are the shop's.
        port = str(shop.orders_api_port + int(replica))
        return ["serve", "orders-api", "--port", port], {}
    raise KeyError(name)


class ChildFailed(RuntimeError):
    """A child process exited while it was expected to run (its log tail says why)."""


@dataclass
class Child:
    """One ``relaybus`` child process, logging to ``log``; restartable after a kill."""

    name: str
    argv: list[str]
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    nice: int = 0  # scheduling niceness (``nice -n``): higher yields the CPU first

    def start(self) -> None:
        env = {**os.environ, **self.env}
        # Each child is its own service in a trace (orders-api-1, saga, …) unless the
        # operator named them all with OTEL_SERVICE_NAME.
        env.setdefault("OTEL_SERVICE_NAME", f"shop-{self.name}")
        with self.log.open("ab") as out:
            # ``nice`` execs the interpreter: the child's pid is still the process's.
            niced = ["nice", "-n", str(self.nice)] if self.nice else []
            self.proc = subprocess.Popen(
                [*niced, sys.executable, "-m", "relaybus.cli", *self.argv],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # a Ctrl-C in the terminal reaches the supervisor only
            )

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash would: nothing is flushed, nothing is handed over."""
        if self.proc is not None and self.running:
            self.proc.kill()
            self.proc.wait()

    def terminate(self) -> None:
        """SIGTERM: finish what is in hand and exit (``stop`` waits for it)."""
        if self.proc is not None and self.running:
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, grace: float = 30.0) -> int | None:
        """SIGTERM, then SIGKILL after ``grace`` seconds."""
        if self.proc is None:
            return None
        if self.running:
            self.terminate()
            try:
                return self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()

    def tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Shop:
    """Starts the shop's processes, waits for them, restarts or stops them.

    ``names`` selects a subset (default: all of ``SHOP_PROCESSES``). Children log to
    ``log_dir/<name>.log``. ``stop_all`` stops in reverse start order.
    """

    def __init__(
        self,
        log_dir: Path,
        shop: ShopSettings,
        names: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.shop = shop
        self.env = dict(env or {})
        self.children = {}
        for name in names or default_names(shop):
            argv, extra = command_of(name, shop)
            self.children[name] = Child(
                name,
                argv,
                log_dir / f"{name}.log",
                {**self.env, **extra},
                nice=0 if argv[0] == "serve" else shop.background_nice,
            )

    def expose_metrics(self, base_port: int) -> dict[str, str]:
        """Give the relay and every worker a Prometheus port, counting up from
        ``base_port`` in start order, and return ``name -> /metrics URL`` (what
        ``RELAYBUS_CONSOLE_METRICS_ENDPOINTS`` takes)."""
        endpoints: dict[str, str] = {}
        port = base_port
        for name, child in self.children.items():
            variable = {"relay": "RELAYBUS_RELAY_METRICS_PORT",
                        "worker": "RELAYBUS_WORKER_METRICS_PORT"}.get(child.argv[0])  # fmt: skip
            if variable is None:
                continue
            child.env[variable] = str(port)
            endpoints[name] = f"http://127.0.0.1:{port}/metrics"
            port += 1
        return endpoints

    def start_all(self) -> None:
        """Start every child. With the router among them, first make the configured
        shard set current (``relaybus shards set``; unchanged if it already is)."""
        if "router" in self.children:
            shards = [str(n) for n in sorted(set(self.shop.inventory_shards))]
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "relaybus.cli",
                    "shards",
                    "set",
                    *shards,
                    "--note",
                    "shop start",
                ],
                env={**os.environ, **self.env},
                check=True,
                capture_output=True,
                timeout=120,
            )
        for child in self.children.values():
            child.start()

    def restart(self, name: str) -> None:
        child = self.children[name]
        child.stop()
        child.restarts += 1
        child.start()

    def stop_all(self, grace: float = 30.0) -> None:
        """SIGTERM to every child at once, then wait for each (SIGKILL past ``grace``)."""
        children = list(reversed(self.children.values()))
        for child in children:
            child.terminate()
        deadline = time.monotonic() + grace
        for child in children:
            child.stop(grace=max(deadline - time.monotonic(), 0.1))

    def supervise(self) -> list[str]:
        """Restart every child that has exited (as ``relaybus run`` and a container
        restart policy do); returns their names. A crashed process of the shop is
        expected to come back: the saga, for one, exits when Kafka fences its
        transactional producer after a long stall."""
        restarted = []
        for child in self.children.values():
            if child.proc is not None and not child.running:
                child.restarts += 1
                child.start()
                restarted.append(child.name)
        return restarted

    def check(self) -> None:
        """Raise ``ChildFailed`` if a child has exited."""
        for child in self.children.values():
            if child.proc is not None and not child.running:
                raise ChildFailed(
                    f"{child.name} exited with {child.proc.returncode}; its log "
                    f"({child.log}) ends:\n{child.tail()}"
                )

    def wait_http(self, timeout: float = 90.0) -> None:
        """Wait until the HTTP services that run answer ``/healthz`` (polled)."""
        urls = {
            "gateway": f"{self.shop.gateway_base_url}/healthz",
            "orders-api": f"{self.shop.orders_api_url}/healthz",
        }
        for n, url in enumerate(self.shop.orders_api_urls[1:], start=1):
            urls[f"{API_REPLICA}{n}"] = f"{url}/healthz"
        pending = {name: url for name, url in urls.items() if name in self.children}
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as client:
            while pending:
                self.check()
                for name, url in list(pending.items()):
                    try:
                        if client.get(url).status_code == 200:
                            del pending[name]
                    except httpx.TransportError:
                        pass  # not listening yet
                if time.monotonic() > deadline:
                    raise ChildFailed(f"{', '.join(pending)} did not answer within {timeout:g} s")
                time.sleep(0.2)
