"""The database's own share of the insert comparison: the same SQL, driven by pgbench.

pgbench (shipped with PostgreSQL) is a C client: with enough clients its throughput
is bounded by the server alone. Running the statements the Python insert rounds
execute, compiled by the same SQLAlchemy dialect, shows what the event row costs
PostgreSQL relative to the bare business insert, whatever the client.

One difference from the Python rounds: the message id is made by the server
(``gen_random_uuid()``), as pgbench variables are numbers or constants.
"""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Mapping

from sqlalchemy import Insert
from sqlalchemy.dialects.postgresql import asyncpg
from sqlalchemy.engine import make_url

from relaybus.outbox.writer import Outbox
from relaybus.stack.postgres import server_tool


def pgbench_script(
    statement: Insert, outbox: Outbox | None, constants: Mapping[str, str]
) -> tuple[str, list[str]]:
    """A pgbench transaction running ``statement`` (with its event if ``outbox``), and the
    ``-D`` options for its constant variables (``constants``: bind name -> value; ids,
    totals, keys and partitions are drawn per transaction).

    The SQL is what ``session.execute`` / ``Outbox.write`` send, compiled by the asyncpg
    dialect; its ``$n`` placeholders become pgbench ``:name`` variables.
    """
    # The writer's own combined statement (a private method: this is diagnostic code).
    executed = outbox.combine(statement)[0] if outbox else statement
    compiled = executed.compile(dialect=asyncpg.dialect())
    names = list(compiled.positiontup or [])

    def variable(match: re.Match[str]) -> str:
        name = names[int(match.group(1)) - 1]
        return "gen_random_uuid()" if name == "rb_id" else f":{name}"

    sql = " ".join(re.sub(r"\$(\d+)", variable, compiled.string).split())
    drawn = {
        "id": r"\set id random(1, 1000000000000000)",
        "total": r"\set total random(1, 1000)",
        "rb_aggregateid": r"\set rb_aggregateid :id",
        "rb_partition": rf"\set rb_partition :id % {outbox.partitions if outbox else 1}",
    }
    lines = [drawn[name] for name in names if name in drawn]
    defines = [f"-D{name}={constants[name]}" for name in names if name in constants]
    return "\n".join([*lines, "BEGIN;", f"{sql};", "COMMIT;", ""]), defines


async def pgbench_tps(
    database_url: str, script: str, defines: list[str], seconds: int, clients: int = 8
) -> float:
    """Transactions per second of ``script`` over ``clients`` prepared-statement connections."""
    url = make_url(database_url)
    process = await asyncio.create_subprocess_exec(
        server_tool("pgbench"),
        "-n",
        "-M",
        "prepared",
        f"-c{clients}",
        "-j2",
        f"-T{seconds}",
        "-f-",  # the script, from stdin
        *defines,
        f"-h{url.host}",
        f"-p{url.port or 5432}",
        f"-U{url.username}",
        url.database or "relaybus",
        env={**os.environ, "PGPASSWORD": url.password or ""},
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    output = (await process.communicate(script.encode()))[0].decode()
    tps = re.search(r"^tps = ([\d.]+)", output, re.MULTILINE)
    failed = re.search(r"number of failed transactions: (\d+)", output)
    if process.returncode != 0 or tps is None or (failed and int(failed.group(1))):
        raise SystemExit(f"pgbench failed:\n{output}")
    return float(tps.group(1))
