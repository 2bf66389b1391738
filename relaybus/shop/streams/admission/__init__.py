"""Admission: the rate-limiting processor in front of the orders (``order.requested``)."""
