"""``python -m relaybus.cli``: the same as the ``relaybus`` console script."""

from relaybus.cli.main import main

main()
