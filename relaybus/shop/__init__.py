"""The reference flash-sale shop: relaybus's first user (install ``relaybus[shop]``).

``contract`` (event and command types, payload models, topics) is the one place its
services (``producers``) and its stream processors (``streams``) both import, so
neither imports the other. ``migrations`` holds its schemas (orders, inventory,
payments) with their own Alembic version table; ``cli`` registers its commands
(``demo``, ``run``, ``serve``, ``stream``, ``shards``, ``keys``, ``shop-db``) with the
``relaybus`` command through the ``relaybus.commands`` entry point group.
"""
