"""Broker adapters: the only kernel modules that import aiokafka / aio-pika."""
