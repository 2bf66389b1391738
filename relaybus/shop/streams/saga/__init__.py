"""The order saga: a faust agent over the shop's events, compensation instead of 2PC."""
