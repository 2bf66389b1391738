"""The shop's business services: each writes its domain rows plus outbox rows in one
transaction (orders API, inventory, payments)."""
