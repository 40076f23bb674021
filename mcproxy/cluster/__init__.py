"""Cluster mode: several ``twistd mcproxy`` processes behind one load balancer acting as
one proxy, coordinating through Redis.

Each user has exactly one owner process, which holds that user's browser connection
and MCP sessions; any process accepts any request and forwards it to the owner. A node
holds a lease in Redis and fences itself when it cannot renew it; owner records carry
fencing tokens that only increase, so a stale owner's writes can be refused.

Modules:

- `mcproxy.cluster.control`: the Redis pool for control traffic (bounded calls, fast reconnect).
- `mcproxy.cluster.scripts`: the Lua scripts (leases, claims, releases, reads).
- `mcproxy.cluster.node`: `NodeMembership`, this node's lease, renewal and self-fencing.
- `mcproxy.cluster.ownership`: `Ownership`, claims, the owner cache, placement, reconciliation.
- `mcproxy.cluster.envelope`, `mcproxy.cluster.forward`: the signed internal hop to an owner.
- `mcproxy.cluster.routing`, `mcproxy.cluster.service`: per-request routing and wiring.
- `mcproxy.cluster.artifacts`: the users' artifact index in Redis, held files fetched over the hop.
"""
