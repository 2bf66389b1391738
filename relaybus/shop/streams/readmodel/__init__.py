"""The order-status read model: a faust table folded from ``order.status`` events."""
