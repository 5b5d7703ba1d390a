"""The request queue's store in Redis: records, the priority queue, leases, the outbox and the
per-caller rate limit, each change one Lua script (lua/)."""
