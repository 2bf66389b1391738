"""The shop's stream processors: admission (rate limits), sharded inventory routing,
the order saga and the order-status read model (faust apps, ``[streams]``)."""
