"""faust-streaming processors: rate limiting, caching, sharded routing, the order
saga. Arrives with the streams issues."""
