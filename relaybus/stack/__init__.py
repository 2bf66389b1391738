"""Starts, stops and reports the real local services (Kafka, RabbitMQ, PostgreSQL, Redis).

Used when no Docker engine is available: every service runs natively from Debian
packages or Maven Central jars, with its data under a git-ignored folder.
"""
