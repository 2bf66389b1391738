"""Fetches Apache Kafka's jars from Maven Central into a cache outside the repository."""

from __future__ import annotations

import shutil
from pathlib import Path

from stack.errors import StackError
from stack.procs import run

POM = Path(__file__).parent / "kafka" / "pom.xml"
LOG4J_CONFIG = Path(__file__).parent / "kafka" / "log4j2.properties"


def kafka_libs(cache_dir: Path, version: str) -> Path:
    """The folder holding Kafka ``version``'s jars, fetched with Maven on first use.

    A ``.complete`` marker is written last, so an interrupted fetch is redone.
    """
    libs = cache_dir / f"kafka-{version}" / "libs"
    if (libs / ".complete").exists():
        return libs
    if shutil.which("mvn") is None:
        raise StackError("kafka: Maven (mvn) is needed to fetch the Kafka jars and is missing")
    if libs.exists():
        shutil.rmtree(libs)
    libs.mkdir(parents=True)
    run(
        [
            "mvn",
            "-q",
            "-B",
            "-f",
            str(POM),
            "dependency:copy-dependencies",
            f"-DoutputDirectory={libs}",
            "-DincludeScope=runtime",
            f"-Dkafka.version={version}",
        ],
        f"kafka: fetching Kafka {version} jars from Maven Central",
    )
    (libs / ".complete").write_text(version)
    return libs
