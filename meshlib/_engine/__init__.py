"""The transport-agnostic engine: handlers, filters and the route → cluster → endpoint stacks.

Nothing in here imports a front door (httpx transport, ASGI, WSGI, sidecar).
"""
