"""The transport-agnostic engine: handlers, filters and the route → cluster → endpoint stacks.

Nothing in here imports a front door (httpx transport, ASGI, WSGI, sidecar), nor the snapshot: the
engine sees a snapshot and its routes through protocols of its own (``outbound.OutboundSnapshot``,
``route_stack.Route``). Policies (``_policies/``) build on the engine; each stack module's builder
takes them as filters, made from config by ``_snapshot/compile.py`` (tests/test_layering.py).
"""
