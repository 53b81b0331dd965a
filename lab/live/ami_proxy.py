#!/usr/bin/env python3
"""A plain TCP proxy for the AMI link: ami_proxy.py LISTEN_PORT [TARGET_PORT=5038].

Stopping this process (SIGTERM/SIGKILL) cuts every link through it and refuses new ones
(nothing listens): an AMI outage as the bridge sees it. Starting it again ends the outage.
"""

import asyncio
import sys

LISTEN = int(sys.argv[1])
TARGET = int(sys.argv[2]) if len(sys.argv) > 2 else 5038


async def pipe(reader, writer):
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def handle(client_r, client_w):
    try:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", TARGET)
    except OSError:
        client_w.close()
        return
    await asyncio.gather(pipe(client_r, up_w), pipe(up_r, client_w))


async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", LISTEN, reuse_address=True)
    print(f"proxy 127.0.0.1:{LISTEN} -> 127.0.0.1:{TARGET}", flush=True)
    async with server:
        await server.serve_forever()


asyncio.run(main())
