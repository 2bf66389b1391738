"""The shop's commands, registered with ``relaybus`` by the ``relaybus.commands``
entry points (pyproject.toml)."""
