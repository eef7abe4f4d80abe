# A TCP proxy on loopback that delays every byte by a fixed time in each
# direction: a long-distance link without netem (this machine's kernel has
# no sch_netem). Bandwidth is not limited.
#
#   python3 bench/delay-proxy.py LISTEN_PORT TARGET_PORT ONE_WAY_DELAY_MS
import asyncio, sys, time
listen, target, delay = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]) / 1000
async def pump(reader, writer):
    q = asyncio.Queue()
    async def sender():
        while True:
            t, data = await q.get()
            if data is None:
                break
            wait = t + delay - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()
        writer.close()
    s = asyncio.create_task(sender())
    while True:
        data = await reader.read(1 << 20)
        if not data:
            break
        q.put_nowait((time.monotonic(), data))
    q.put_nowait((time.monotonic(), None))
    await s
async def handle(cr, cw):
    sr, sw = await asyncio.open_connection('127.0.0.1', target)
    await asyncio.gather(pump(cr, sw), pump(sr, cw), return_exceptions=True)
async def main():
    srv = await asyncio.start_server(handle, '127.0.0.1', listen)
    async with srv:
        await srv.serve_forever()
asyncio.run(main())
