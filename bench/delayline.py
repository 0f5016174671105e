"""A userspace WAN emulator for machines without ``tc netem``: TCP relays that delay and rate-limit.

    python bench/delayline.py --delay-ms 10 --rate-mbit 100 LISTEN_HOST:PORT=TARGET_HOST:PORT ...

Every relayed connection gets, in each direction, a link of ``--rate-mbit`` (bytes leave one after
another at that rate) followed by ``--delay-ms`` of propagation: a chunk read at time t is written at
``max(t, link free) + size / rate + delay``. Prints ``ready`` once every listener is open.
"""

from __future__ import annotations

import argparse
import asyncio
import time

CHUNK = 64 << 10


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float, rate: float) -> None:
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def deliver() -> None:
        while True:
            due, data = await queue.get()
            if not data:
                break
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        writer.close()

    sender = asyncio.create_task(deliver())
    link_free = 0.0
    try:
        while data := await reader.read(CHUNK):
            depart = max(time.monotonic(), link_free)
            link_free = depart + len(data) * 8 / rate
            await queue.put((link_free + delay, data))
    except OSError:
        pass
    await queue.put((0.0, b""))
    try:
        await sender
    except OSError:
        pass


async def _relay(target: tuple[str, int], delay: float, rate: float,
                 reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        up_reader, up_writer = await asyncio.open_connection(*target)
    except OSError:
        writer.close()
        return
    await asyncio.gather(_pump(reader, up_writer, delay, rate), _pump(up_reader, writer, delay, rate))


async def main(args: argparse.Namespace) -> None:
    servers = []
    for spec in args.links:
        listen, target = spec.split("=")
        lhost, lport = listen.rsplit(":", 1)
        thost, tport = target.rsplit(":", 1)

        async def handler(r, w, target=(thost, int(tport))):  # noqa: ANN001, ANN202
            await _relay(target, args.delay_ms / 1000, args.rate_mbit * 1e6, r, w)

        servers.append(await asyncio.start_server(handler, lhost, int(lport)))
    print("ready", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--delay-ms", type=float, required=True, help="one-way delay of each link")
    ap.add_argument("--rate-mbit", type=float, default=100.0)
    ap.add_argument("links", nargs="+", metavar="LISTEN=TARGET")
    asyncio.run(main(ap.parse_args()))
