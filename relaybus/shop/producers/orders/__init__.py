"""The orders service: the HTTP API that takes orders, and the worker that applies the
saga's transitions to them. Owns the ``orders`` schema."""
