"""``meshlib proxy`` with a resolver as small and slow as a bad day's: ``python -m tests.sidecar.slow_dns_proxy ARGS``.

The proxy runs as ``meshlib proxy ARGS`` does, on an asyncio loop where
every name but ``localhost`` takes ``$SLOW_LOOKUP`` seconds (default 0.5) and
then does not resolve: a name a config no longer routes, passed through to a
DNS that answers slowly. Lookups run on two threads (libuv's pool, under
uvloop, has four) or, with ``SLOW_LOOKUP_POOL=default``, in the loop's default
executor, as asyncio's own ``getaddrinfo`` does.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from meshlib._cli import main
from meshlib._sidecar import process

SLOW_LOOKUP = float(os.environ.get("SLOW_LOOKUP", "0.5"))
POOL = None if os.environ.get("SLOW_LOOKUP_POOL") == "default" else ThreadPoolExecutor(2, thread_name_prefix="lookup")


class SlowLookupLoop(asyncio.SelectorEventLoop):
    async def getaddrinfo(self, host: bytes | str | None, port: bytes | str | int | None, **kwargs: Any) -> list[Any]:
        def lookup() -> list[Any]:
            if host != "localhost":
                time.sleep(SLOW_LOOKUP)
                raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
            return socket.getaddrinfo(host, port, **kwargs)

        return await self.run_in_executor(POOL, lookup)


if __name__ == "__main__":
    process._event_loop = SlowLookupLoop
    sys.exit(main(["proxy", *sys.argv[1:]]))
