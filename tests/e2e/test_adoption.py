"""relaybus as a new team meets it: the built wheel in fresh virtualenvs.

- the base install is one import package and imports no FastAPI, faust or Jinja2;
- the README's "Use it in your service" snippets run unchanged against the stack;
- examples/quickstart (its own Alembic history with relaybus's tables) runs end to end;
- with the ``[shop]`` extra, the shop's commands are there and the demo runs from it.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from relaybus.settings import Settings
from tests.support.adoption import (
    FOREIGN,
    REPO,
    background,
    build_wheel,
    environment,
    fresh_venv,
    pip_shim,
    start_group_at_end,
)
from tests.support.db import scratch_database
from tests.support.poll import eventually
from tests.support.shop import env_of, shop_settings


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_wheel(tmp_path_factory.mktemp("dist"))


@pytest.fixture(scope="module")
def base_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv with only the base install of the wheel; its bin folder."""
    return fresh_venv(tmp_path_factory.mktemp("base") / "venv", str(wheel))


@pytest.fixture
def database(settings: Settings) -> Iterator[str]:
    with scratch_database(settings.database_url) as url:
        yield url


def run(args: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=cwd, check=False)
    assert proc.returncode == 0, f"{args}: {proc.stdout}\n{proc.stderr}"
    return proc.stdout


async def rows(url: str, sql: str) -> list[tuple[object, ...]]:
    engine = create_async_engine(url)
    try:
        async with engine.connect() as conn:
            return [tuple(r) for r in await conn.execute(text(sql))]
    finally:
        await engine.dispose()


def test_the_base_install_is_one_package_without_web_or_faust(base_venv: Path) -> None:
    modules = (
        "relaybus, relaybus.outbox, relaybus.consumers, relaybus.streams.runtime,"
        " relaybus.outbox.relay, relaybus.consumers.worker, relaybus.cli.main,"
        " relaybus.db.migrations"
    )
    show = "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    imported = run([str(base_venv / "python"), "-c", f"import sys, {modules}; {show}"]).split()
    assert not set(FOREIGN) & set(imported)
    uv = str(REPO / ".venv" / "bin" / "uv")
    listing = [uv, "pip", "list", "--format", "json", "--python", str(base_venv / "python")]
    installed = json.loads(run(listing))
    names = {p["name"].lower() for p in installed}
    assert "relaybus" in names
    assert not {"fastapi", "faust-streaming", "jinja2", "uvicorn"} & names
    site = next((base_venv.parent / "lib").glob("python3*/site-packages"))
    record = next(site.glob("relaybus-*.dist-info")) / "RECORD"
    tops = {line.split("/")[0] for line in record.read_text().splitlines()}
    assert {t for t in tops if not t.endswith(".dist-info") and not t.startswith("..")} == {
        "relaybus"
    }


def test_a_shop_command_without_the_extra_names_the_extra(base_venv: Path) -> None:
    proc = subprocess.run(
        [str(base_venv / "relaybus"), "serve", "orders-api"], capture_output=True, text=True
    )
    assert proc.returncode == 2
    assert "pip install 'relaybus[shop]'" in proc.stderr
    assert "Traceback" not in proc.stderr


def readme_steps() -> list[tuple[str, str]]:
    """The fenced blocks of the README's "Use it in your service" section, in order."""
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Use it in your service", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```(sh|python)\n(.*?)```", section, flags=re.S)


def test_the_readme_snippets_run_unchanged(
    settings: Settings, base_venv: Path, database: str, tmp_path: Path
) -> None:
    steps = readme_steps()
    assert [kind for kind, _ in steps].count("python") >= 3
    asyncio.run(start_group_at_end(settings, "outbox.event.user", "welcome"))
    fresh = fresh_venv(tmp_path / "venv")  # the service's own virtualenv, empty
    env = environment(settings, [pip_shim(fresh, tmp_path / "shim"), fresh], database)
    env["RELAYBUS_CHECKOUT"] = str(REPO)
    workdir = tmp_path / "service"
    workdir.mkdir()
    outputs: list[str] = []
    with background(workdir, env) as processes:
        for kind, body in steps:
            if kind == "python":
                name = re.match(r"# file: (\S+)\n", body)
                assert name, f"a README python block names its file: {body[:60]}"
                (workdir / name.group(1)).write_text(body)
                continue
            script: list[str] = []
            for line in body.splitlines():
                if line.rstrip().endswith("&"):
                    processes.start(line.rstrip()[:-1])
                elif line.startswith(("relaybus outbox status", "relaybus lag")):
                    # "see it applied": once the handler's row is there
                    asyncio.run(
                        eventually(lambda: _welcomed(database), within=120, what=processes.logs())
                    )
                    script.append(line)
                else:
                    script.append(line)
            if script:
                proc = subprocess.run(
                    ["bash", "-ec", "\n".join(script)],
                    cwd=workdir, env=env, capture_output=True, text=True, check=False,
                )  # fmt: skip
                assert proc.returncode == 0, f"{script}\n{proc.stdout}\n{proc.stderr}"
                outputs.append(proc.stdout)
                env.update(_exports(script))
    assert asyncio.run(rows(database, "SELECT email FROM welcome_emails")) == [("ada@example.com",)]
    assert asyncio.run(rows(database, "SELECT count(*) FROM outbox")) == [(0,)]
    assert "welcome" in outputs[-1]


def _exports(script: list[str]) -> dict[str, str]:
    """``export NAME='value'`` lines of a block, for the blocks after it (one shell)."""
    found = {}
    for line in script:
        match = re.match(r"export (\w+)='(.*)'$", line)
        if match:
            found[match.group(1)] = match.group(2)
    return found


async def _welcomed(url: str) -> bool:
    """The handler's row is there (its table appears with the first signup)."""
    if not await rows(url, "SELECT 1 FROM pg_tables WHERE tablename = 'welcome_emails'"):
        return False
    return bool(await rows(url, "SELECT 1 FROM welcome_emails"))


def test_the_quickstart_runs_from_the_wheel(
    settings: Settings, wheel: Path, database: str, tmp_path: Path
) -> None:
    asyncio.run(start_group_at_end(settings, "outbox.event.ticket", "ticket-notifications"))
    bin_dir = fresh_venv(tmp_path / "venv", str(wheel), str(REPO / "examples" / "quickstart"))
    env = environment(settings, [bin_dir], database)
    example = REPO / "examples" / "quickstart"
    for _ in range(2):  # the second upgrade is a no-op for both histories
        run([str(bin_dir / "alembic"), "-c", str(example / "alembic.ini"), "upgrade", "head"], env)
    tables = {r[0] for r in asyncio.run(rows(database, "SELECT tablename FROM pg_tables "
                                              "WHERE schemaname = 'public'"))}  # fmt: skip
    assert {"tickets", "ticket_notifications", "outbox", "inbox", "alembic_version",
            "relaybus_alembic_version"} <= tables  # fmt: skip
    assert not asyncio.run(rows(database, "SELECT 1 FROM pg_namespace WHERE nspname = 'orders'"))
    with background(tmp_path, env) as processes:
        processes.start(f"{bin_dir / 'relaybus'} relay")
        processes.start(f"{bin_dir / 'relaybus'} worker tickets.handlers:app")
        titles = ["printer on fire", "coffee machine empty", "<b>markup</b> & ünïcode"]
        run([str(bin_dir / "python"), "-m", "tickets.service", *titles], env, cwd=tmp_path)

        async def notified() -> bool:
            return len(await rows(database, "SELECT 1 FROM ticket_notifications")) == 3

        asyncio.run(eventually(notified, within=120, what=processes.logs()))
    got = asyncio.run(rows(database, "SELECT title FROM ticket_notifications ORDER BY ticket_id"))
    assert [t for (t,) in got] == titles
    status = json.loads(run([str(bin_dir / "relaybus"), "outbox", "status", "--json"], env))
    assert status["pending"] == 0


@pytest.mark.timeout(600)
def test_the_shop_extra_brings_the_shop_and_its_demo_runs(
    settings: Settings, wheel: Path, database: str, tmp_path: Path
) -> None:
    """``relaybus[shop]`` from the wheel: its commands are registered, and the demo
    runs every shop process from that install (children are ``python -m relaybus.cli``
    of the same virtualenv) and prints its report as JSON."""
    bin_dir = fresh_venv(tmp_path / "venv", f"relaybus[shop] @ {wheel.as_uri()}")
    listed = run([str(bin_dir / "relaybus"), "--help"])
    for command in ("demo", "run", "serve", "stream", "shards", "keys", "shop-db"):
        assert command in listed
    env = {**environment(settings, [bin_dir], database), **env_of(shop_settings())}
    run([str(bin_dir / "relaybus"), "shop-db", "upgrade"], env, cwd=tmp_path)
    demo = [
        str(bin_dir / "relaybus"), "demo", "--orders", "60", "--products", "2", "--stock",
        "20", "--json", "--logs", str(tmp_path / "logs"),
    ]  # fmt: skip
    report = json.loads(run(demo, env, cwd=tmp_path))
    assert report["ok"] is True
    assert report["orders"] == 60
    assert report["statuses"]["CONFIRMED"] + report["statuses"]["CANCELLED"] == 60
    assert all(p["conserved"] for p in report["products"])
