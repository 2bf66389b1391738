"""A help desk on relaybus: opening a ticket writes its row and a ``ticket.opened``
event in one transaction; a handler notifies once per event."""
