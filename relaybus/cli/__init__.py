"""The ``relaybus`` command line (typer)."""
