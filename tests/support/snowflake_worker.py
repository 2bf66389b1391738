"""Child process for the snowflake test: lease a worker id, write N ids to a file."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from relaybus.db import create_engine
from relaybus.locks.postgres import PostgresLock
from relaybus.settings import Settings
from relaybus.snowflake import WorkerIdLease


def _generate(lease: WorkerIdLease, count: int, out: Path, ready: Path, go: Path) -> None:
    # Start generating only once every process holds its lease: all 4 run at once.
    ready.write_text("ok")
    deadline = time.monotonic() + 60
    while not go.exists():
        if time.monotonic() > deadline:
            raise SystemExit("no go signal")
        time.sleep(0.01)
    out.write_text("\n".join(str(lease.next_id()) for _ in range(count)))


async def main(count: int, out: str, ready: str, go: str) -> None:
    engine = create_engine(Settings().database_url, pool_size=2)
    lease = WorkerIdLease(PostgresLock(engine), ttl=30)
    await lease.acquire()
    try:
        await asyncio.to_thread(_generate, lease, count, Path(out), Path(ready), Path(go))
    finally:
        await lease.release()
        await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]))
