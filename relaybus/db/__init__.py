"""Database plumbing: the declarative base every package's models share, engines."""

from relaybus.db.base import Base
from relaybus.db.engine import create_engine, session_factory

__all__ = ["Base", "create_engine", "session_factory"]
