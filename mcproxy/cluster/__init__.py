"""Cluster mode: several processes acting as one proxy, coordinated through Redis."""
