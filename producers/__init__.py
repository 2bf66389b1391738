"""Business services writing domain rows plus outbox rows (the flash-sale shop:
orders API, inventory, payments). Arrives with the shop issues."""
