"""relaybus: a transactional outbox, a relay to Kafka/RabbitMQ, idempotent consumers
and a stream runtime, in one import package.

The library is ``relaybus`` (the kernel: settings, message envelope, ids, brokers,
database, locks), ``relaybus.outbox``, ``relaybus.consumers``, ``relaybus.streams``
and ``relaybus.cli``; ``relaybus.shop`` is the reference flash-sale shop, the
library's first user (the ``[shop]`` extra). Importing ``relaybus`` does no I/O and
imports neither FastAPI, faust nor Jinja2.
"""

__version__ = "0.2.0"
