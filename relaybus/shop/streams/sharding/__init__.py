"""The shop's sharded inventory routing: the shard directory (epochs) and the router."""
