"""Typed settings for every relaybus process (environment prefix ``RELAYBUS_``)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Where the services are. Defaults are the loopback endpoints ``relaybus stack up`` starts.

    Each field reads ``RELAYBUS_<FIELD>`` (e.g. ``RELAYBUS_DATABASE_URL``); a ``.env``
    file in the working directory is read too. Built once per process, in its
    composition root, and passed down: nothing reads the environment elsewhere.
    """

    model_config = SettingsConfigDict(env_prefix="RELAYBUS_", env_file=".env", extra="ignore")

    database_url: str = Field(
        "postgresql+asyncpg://relaybus:relaybus@127.0.0.1:5432/relaybus",
        description="SQLAlchemy async URL of the PostgreSQL database.",
    )
    kafka_bootstrap: str = Field(
        "127.0.0.1:9092", description="Comma-separated Kafka bootstrap servers."
    )
    rabbitmq_url: str = Field(
        "amqp://guest:guest@127.0.0.1:5672/", description="AMQP URL of RabbitMQ."
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis URL.")
