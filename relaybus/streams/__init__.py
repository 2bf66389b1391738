"""Stream processing: the stateless processor runtime (one Kafka loop), rate limiters,
caches (FIFO/LRU/LFU), a consistent-hash ring with virtual nodes and load balancing,
and the record envelope shared with faust agents (faust itself is ``[streams]``)."""
