"""relaybus kernel: settings, envelope and ids, broker adapters, database, CLI.

Imports none of ``producers``, ``outbox``, ``consumers`` or ``streams``; does no I/O
at import time.
"""

__version__ = "0.1.0"
