# A TCP proxy on loopback that delays every byte by a fixed time in each
# direction: a long-distance link without netem (this machine's kernel has
# no sch_netem). Optionally caps each direction's bandwidth and writes the
# bytes it carried in each direction to a file (every half second and at
# exit: "UP DOWN", up being client to target).
#
#   python3 bench/delay-proxy.py LISTEN_PORT TARGET_PORT ONE_WAY_DELAY_MS [MBIT_PER_S [COUNT_FILE]]
import asyncio, signal, sys, time
listen, target, delay = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]) / 1000
rate = float(sys.argv[4]) * 1e6 / 8 if len(sys.argv) > 4 and float(sys.argv[4]) > 0 else None
count_file = sys.argv[5] if len(sys.argv) > 5 else None
carried = {"up": 0, "down": 0}
# One link: each direction's bandwidth is shared by all its connections.
link_free = {"up": 0.0, "down": 0.0}

async def pump(reader, writer, way):
    q = asyncio.Queue()
    async def sender():
        while True:
            t, data = await q.get()
            if data is None:
                break
            due = t + delay
            if rate:
                # Serialised on the link: the bytes leave when the link is
                # free and take len/rate to cross it.
                start = max(link_free[way], time.monotonic())
                link_free[way] = start + len(data) / rate
                due = max(due, link_free[way])
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            carried[way] += len(data)
            await writer.drain()
        writer.close()
    s = asyncio.create_task(sender())
    while True:
        data = await reader.read(1 << 16)
        if not data:
            break
        q.put_nowait((time.monotonic(), data))
    q.put_nowait((time.monotonic(), None))
    await s

async def handle(cr, cw):
    sr, sw = await asyncio.open_connection('127.0.0.1', target)
    await asyncio.gather(pump(cr, sw, "up"), pump(sr, cw, "down"), return_exceptions=True)

def write_counts():
    if count_file:
        with open(count_file + ".tmp", "w") as f:
            f.write(f"{carried['up']} {carried['down']}\n")
        import os
        os.replace(count_file + ".tmp", count_file)

async def counter():
    while True:
        write_counts()
        await asyncio.sleep(0.5)

async def main():
    loop = asyncio.get_running_loop()
    stop = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, lambda: stop.done() or stop.set_result(None))
    srv = await asyncio.start_server(handle, '127.0.0.1', listen)
    c = asyncio.create_task(counter())
    async with srv:
        await stop
    c.cancel()
    write_counts()
asyncio.run(main())
