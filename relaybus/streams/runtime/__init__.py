"""How stateless stream processors run: one small interface, one Kafka runtime.

A ``StreamProcessor`` maps a batch of decoded records to the records to send; the
runtime owns consuming, decoding untrusted input, dead-lettering, sending and
committing. Stateful processors (the saga, the order-status read model) are faust
apps instead (exactly-once tables).
"""

from relaybus.streams.runtime.kafka_loop import KafkaStreamRunner
from relaybus.streams.runtime.processor import Emit, Result, StreamProcessor

__all__ = ["Emit", "KafkaStreamRunner", "Result", "StreamProcessor"]
