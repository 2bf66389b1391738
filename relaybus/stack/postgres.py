"""PostgreSQL from Debian's packages, in a cluster of our own under the stack's data dir."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from relaybus.stack.errors import StackError
from relaybus.stack.procs import read_pid, require_free_port, run, tail
from relaybus.stack.secure import SecureMaterial
from relaybus.stack.service import ServiceStatus
from relaybus.stack.settings import StackSettings

# Debezium's PostgreSQL connector reads the WAL through logical decoding.
SERVER_CONF = """\
listen_addresses = '{host}'
port = {port}
unix_socket_directories = '{run_dir}'
wal_level = logical
max_wal_senders = 10
max_replication_slots = 10
max_connections = 200
shared_buffers = 256MB
# Per-statement cost accounting (bench: what the relay's SQL costs the server).
shared_preload_libraries = 'pg_stat_statements'
# A replication slot nobody consumes keeps WAL; past this it is invalidated instead of
# filling the disk (docs/cdc.md: its consumer must then start from a new slot).
max_slot_wal_keep_size = 4GB
"""


def server_tool(tool: str) -> str:
    """Path of ``tool`` (``pg_ctl``, ``psql``, ``pgbench``…) of the newest installed server.

    Raises ``StackError`` if no PostgreSQL server is installed.
    """
    versions = sorted(
        (p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.is_dir()),
        key=lambda p: int(p.parent.name),
    )
    if not versions:
        raise StackError("postgresql: no server binaries under /usr/lib/postgresql")
    return str(versions[-1] / tool)


class Postgres:
    """One PostgreSQL server with a ``relaybus`` role and database (password auth on TCP)."""

    name = "postgresql"

    def __init__(self, settings: StackSettings) -> None:
        self.s = settings
        self.home = self._home(settings.data_dir / "postgres")
        self.pgdata = self.home / "data"
        self.run_dir = self.home / "run"
        self.log = self.home / "postgres.log"

    @staticmethod
    def _home(wanted: Path) -> Path:
        """The server runs as the ``postgres`` user, who must reach its data directory.

        If the checkout sits below a folder that user cannot enter (a private home),
        the data lives under /var/tmp instead, linked from the stack's folder.
        """
        if os.geteuid() != 0 or wanted.is_symlink() or _postgres_can_enter(wanted.parent):
            return wanted
        # A fresh, unpredictable folder (mkdtemp: 0700, ours): nothing another user
        # planted in /var/tmp can be followed by the chown that hands it to postgres.
        real = Path(tempfile.mkdtemp(prefix="relaybus-postgres-", dir="/var/tmp"))
        wanted.parent.mkdir(parents=True, exist_ok=True)
        wanted.symlink_to(real)
        return wanted

    def _as_owner(self, argv: list[str]) -> list[str]:
        # PostgreSQL refuses to run as root; as root we hand the cluster to `postgres`.
        return ["runuser", "-u", "postgres", "--", *argv] if os.geteuid() == 0 else argv

    def pid(self) -> int | None:
        """The postmaster's pid, None when it is not running."""
        return read_pid(self.pgdata / "postmaster.pid")

    def start(self) -> None:
        """Create the cluster on first use, start it (``pg_ctl -w``), ensure role + db."""
        if self.pid() is None:
            require_free_port(self.s.host, self.s.postgres_port, self.name)
            self._init_cluster()
            run(
                self._as_owner(
                    [
                        server_tool("pg_ctl"),
                        "-D",
                        str(self.pgdata),
                        "-l",
                        str(self.log),
                        "-w",
                        "-t",
                        str(int(self.s.start_timeout_s)),
                        "start",
                    ]
                ),
                "postgresql: pg_ctl start",
            )
        self._ensure_database()

    def _init_cluster(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:
            home = self.home.resolve()  # our own folder, or our own mkdtemp link target
            shutil.chown(home, "postgres")
            shutil.chown(self.run_dir, "postgres")
            os.chmod(home, 0o700)
        if (self.pgdata / "PG_VERSION").exists():
            return
        run(
            self._as_owner(
                [
                    server_tool("initdb"),
                    "-D",
                    str(self.pgdata),
                    "-U",
                    "postgres",
                    "--auth-local=peer",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                ]
            ),
            "postgresql: initdb",
        )
        conf = self.pgdata / "postgresql.conf"
        with conf.open("a") as fh:
            fh.write("\n# relaybus stack\n")
            fh.write(
                SERVER_CONF.format(
                    host=self.s.host, port=self.s.postgres_port, run_dir=self.run_dir
                )
            )

    def _psql(self, sql: str, db: str = "postgres", stdin: bool = False) -> str:
        """Run ``sql``; with ``stdin`` it is piped in, not passed as an argument (for
        statements that carry a password)."""
        return run(
            self._as_owner(
                [
                    server_tool("psql"),
                    "-h",
                    str(self.run_dir),
                    "-p",
                    str(self.s.postgres_port),
                    "-U",
                    "postgres",
                    "-d",
                    db,
                    "-tA",
                    *(["-f", "-"] if stdin else ["-c", sql]),
                ]
            ),
            "postgresql: psql",
            stdin=sql if stdin else None,
        ).strip()

    def has_table(self, table: str) -> bool:
        """True once ``table`` exists in the stack's database (``relaybus db upgrade``)."""
        if not table.replace("_", "").isalnum():
            raise StackError(f"postgresql: not a table name: {table!r}")
        found = self._psql(f"SELECT to_regclass('public.{table}') IS NOT NULL", self.s.postgres_db)
        return found == "t"

    def _ensure_database(self) -> None:
        user, db = self.s.postgres_user, self.s.postgres_db
        # A generated password (stack/secure.py), set on every start: an older stack's
        # well-known one stops working. Piped in, never on a command line; a literal
        # from token_urlsafe (no quote can occur in it).
        pw = SecureMaterial(self.s).ensure().postgres_password
        if not self._psql(f"SELECT 1 FROM pg_roles WHERE rolname = '{user}'"):
            # CREATEDB: tests migrate throw-away databases; REPLICATION: Debezium.
            self._psql(f"CREATE ROLE {user} LOGIN CREATEDB REPLICATION PASSWORD '{pw}'", stdin=True)
        else:
            self._psql(f"ALTER ROLE {user} PASSWORD '{pw}'", stdin=True)
        if not self._psql(f"SELECT 1 FROM pg_database WHERE datname = '{db}'"):
            self._psql(f"CREATE DATABASE {db} OWNER {user}")
        self._bench_ready(db)

    def _bench_ready(self, db: str) -> None:
        # The bench reads (and resets) per-statement costs as the relaybus role.
        self._psql(
            "CREATE EXTENSION IF NOT EXISTS pg_stat_statements; "
            f"GRANT EXECUTE ON FUNCTION pg_stat_statements_reset TO {self.s.postgres_user};",
            db,
        )

    def recreate_database(self, name: str) -> None:
        """Drop ``name`` if it exists and create it empty, owned by the stack's role and
        ready for the bench (``pg_stat_statements``): a second database on this server
        for test runs that must not share the first one's outbox. ``name`` is a plain
        identifier (letters, digits, ``_``)."""
        if not name.replace("_", "").isalnum() or not name.isascii():
            raise ValueError(f"database name {name!r}: letters, digits and _ only")
        self._psql(f'DROP DATABASE IF EXISTS "{name}"')
        self._psql(f'CREATE DATABASE "{name}" OWNER {self.s.postgres_user}')
        self._bench_ready(name)

    def stop(self, mode: str = "fast") -> bool:
        """``pg_ctl stop -m MODE`` on our cluster (its postmaster pid), if it runs.
        ``fast``: roll back sessions, checkpoint, exit; ``immediate``: every process
        quits at once, as in a crash (the next start runs crash recovery)."""
        if self.pid() is None:
            return False
        run(
            self._as_owner(
                [server_tool("pg_ctl"), "-D", str(self.pgdata), "-m", mode, "-w", "stop"]
            ),
            f"postgresql: pg_ctl stop -m {mode}",
        )
        return True

    def status(self) -> list[ServiceStatus]:
        pid = self.pid()
        s = self.s
        endpoint = f"postgresql://{s.postgres_user}:***@{s.host}:{s.postgres_port}/{s.postgres_db}"
        detail = "wal_level=logical" if pid else tail(self.log, 1)
        return [ServiceStatus(self.name, pid is not None, endpoint, pid, detail)]


def _postgres_can_enter(folder: Path) -> bool:
    probe = folder
    while not probe.exists():
        probe = probe.parent
    check = ["runuser", "-u", "postgres", "--", "test", "-x", str(probe)]
    return subprocess.run(check, capture_output=True, check=False).returncode == 0
