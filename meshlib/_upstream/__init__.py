"""Clusters, endpoints and their live state, which survives config reloads."""
