"""``relaybus bench --quick``: every scenario still runs end to end on the real stack
and writes its results (to a scratch folder, never over ``bench/results``). No
number is asserted: the machines are shared and noisy.

The shop scenario starts a whole shop (its consumer groups, faust apps, router lease
and ports are the shop's own); ``make test`` runs other shops at the same time on the
main Kafka, so it runs on the 3-node cluster's Kafka (this run's), on Redis databases
and ports of its own, in its own test."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from bench.harness import SCENARIOS, which
from relaybus.settings import Settings
from relaybus.stack.kafka_broker import KafkaCluster
from relaybus.stack.settings import StackSettings
from tests.support.cli import REPO, run_cli

ALONE = {"shop"}  # run by their own test below


@pytest.mark.timeout(900)  # every scenario in turn: longer than one test's default
@pytest.mark.slow
@pytest.mark.bench
def test_every_scenario_runs_in_quick_mode(tmp_path: Path) -> None:
    committed = {p.name: p.read_bytes() for p in (REPO / "bench" / "results").glob("*.json")}
    doc = REPO / "docs" / "benchmarks.md"
    doc_before = doc.read_bytes() if doc.exists() else None
    names = [name for name in SCENARIOS if name not in ALONE]
    proc = run_cli(
        "bench", *names, "--quick", env={"RELAYBUS_BENCH_RESULTS": str(tmp_path)}, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name, scenario in SCENARIOS.items():
        if name in ALONE:
            continue
        if scenario.needs and which(scenario.needs) is None:
            assert f"{name}: skipped ({scenario.needs} is not installed)" in proc.stdout
            continue
        data = json.loads((tmp_path / f"{name}.json").read_text())
        assert data["benchmark"] == name
        assert data["comparisons"], name
        for comparison in data["comparisons"]:
            assert comparison["candidate"]["values"], (name, comparison["label"])
    # Real results and the docs page are untouched by a smoke run.
    assert {p.name: p.read_bytes() for p in (REPO / "bench" / "results").glob("*.json")} == (
        committed
    )
    assert (doc.read_bytes() if doc.exists() else None) == doc_before


def other_redis_db(url: str, db: int) -> str:
    """``url`` with its database number replaced by ``db``."""
    return urlsplit(url)._replace(path=f"/{db}").geturl()


@pytest.mark.timeout(600)
@pytest.mark.slow
@pytest.mark.bench
def test_the_shop_scenario_runs_in_quick_mode(tmp_path: Path) -> None:
    cluster = KafkaCluster.three_nodes(StackSettings())
    assert all(n.pid() for n in cluster.nodes), "run `relaybus stack up --kafka-nodes 3` first"
    settings = Settings()
    (tmp_path / "faust").mkdir()  # faust makes its app folders, not their parent
    env = {
        "RELAYBUS_BENCH_RESULTS": str(tmp_path),
        "RELAYBUS_KAFKA_BOOTSTRAP": cluster.bootstrap,
        "RELAYBUS_REDIS_URL": other_redis_db(settings.redis_url, 3),
        "RELAYBUS_REDLOCK_URLS": json.dumps(
            [other_redis_db(url, 3) for url in settings.redlock_urls]
        ),
        "RELAYBUS_ORDERS_API_PORT": "18380",
        "RELAYBUS_GATEWAY_PORT": "18390",
        "RELAYBUS_READ_MODEL_PORT": "18395",
        "RELAYBUS_FAUST_DATA_DIR": str(tmp_path / "faust"),
    }
    proc = run_cli("bench", "shop", "--quick", env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / "shop.json").read_text())
    (phases,) = data["phases"].values()
    assert [p["phase"] for p in phases] == ["idle", "maximum", "50 %", "overload 3x"]
    for phase in phases[1:]:
        assert phase["unfinished"] == 0, phase  # nothing admitted is left behind
        assert phase["cpu_ms_per_order"]["orders-api"] > 0, phase
    assert data["peak_rss_mb"]["as-shipped"]["saga"] > 0
