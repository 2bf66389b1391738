"""Fetches Java jars (Apache Kafka; Kafka Connect with Debezium) from Maven Central into a
cache outside the repository."""

from __future__ import annotations

import shutil
from pathlib import Path

from relaybus.stack.errors import StackError
from relaybus.stack.procs import run

POM = Path(__file__).parent / "kafka" / "pom.xml"
LOG4J_CONFIG = Path(__file__).parent / "kafka" / "log4j2.properties"
DEBEZIUM_POM = Path(__file__).parent / "debezium" / "pom.xml"


def kafka_libs(cache_dir: Path, version: str) -> Path:
    """The folder holding Kafka ``version``'s jars, fetched with Maven on first use."""
    return maven_libs(
        cache_dir / f"kafka-{version}" / "libs", POM, {"kafka.version": version}, "kafka"
    )


def debezium_libs(cache_dir: Path, kafka_version: str, debezium_version: str) -> Path:
    """Kafka Connect ``kafka_version`` plus Debezium's PostgreSQL connector, one folder."""
    return maven_libs(
        cache_dir / f"connect-{kafka_version}-debezium-{debezium_version}" / "libs",
        DEBEZIUM_POM,
        {"kafka.version": kafka_version, "debezium.version": debezium_version},
        "debezium",
    )


def maven_libs(libs: Path, pom: Path, properties: dict[str, str], what: str) -> Path:
    """``libs`` filled with ``pom``'s runtime dependencies, fetched with Maven once.

    A ``.complete`` marker is written last, so an interrupted fetch is redone.
    """
    if (libs / ".complete").exists():
        return libs
    if shutil.which("mvn") is None:
        raise StackError(f"{what}: Maven (mvn) is needed to fetch the jars and is missing")
    if libs.exists():
        shutil.rmtree(libs)
    libs.mkdir(parents=True)
    defines = [f"-D{k}={v}" for k, v in properties.items()]
    run(
        [
            "mvn",
            "-q",
            "-B",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={libs}",
            "-DincludeScope=runtime",
            *defines,
        ],
        f"{what}: fetching {', '.join(properties.values())} jars from Maven Central",
    )
    (libs / ".complete").write_text(" ".join(properties.values()))
    return libs
