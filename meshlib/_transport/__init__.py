"""meshlib's HTTP/1.1 client, in three layers: ``wire`` (bytes), ``connection`` (one socket), ``pool`` (the transport).

:class:`AsyncHTTP1Transport` is an ``httpx.AsyncBaseTransport`` on asyncio
protocols and llhttp (httptools). The sidecar sends upstream with it, and an
async app can use it as its mesh client's inner transport
(``mesh.async_client(transport=meshlib.AsyncHTTP1Transport())``): httpx's
own pool spends most of a request's CPU at concurrency.
"""

from meshlib._transport.pool import AsyncHTTP1Transport

__all__ = ["AsyncHTTP1Transport"]
