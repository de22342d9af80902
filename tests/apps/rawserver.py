"""The serving loop the raw-socket test workers share (bodyworker, hostileworker,
rawbackend): each connection to 127.0.0.1:PORT (PORT is ``argv[1]``, as the gateway's
``{port}`` gives it) goes to the worker's own ``handle``, until the process is stopped."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def serve(handle: Handler) -> None:
    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[1]))
        async with server:
            await server.serve_forever()

    asyncio.run(main())
