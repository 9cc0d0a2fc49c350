#!/usr/bin/env python3
"""wan_relay.py - userspace WAN link emulator (delay / rate / loss) for TCP or UDP.

Stand-in for netem in network fault tests. Stdlib only (asyncio).
Each direction of each flow is an independent emulated link:
  * serialization: a chunk occupies the link for len*8/rate seconds, FIFO order
  * propagation:   the chunk is delivered --delay-ms after it leaves the link
  * loss:          UDP drops the datagram; TCP adds a retransmission-like stall
"""
import argparse, asyncio, collections, random, signal, socket, sys

CHUNK = 64 * 1024   # max bytes read per TCP chunk
TCP_BUF = 256       # max chunks queued per TCP direction (then backpressure reader)
UDP_QLIMIT = 1000   # max datagrams queued per UDP direction (tail drop, like netem)
UDP_IDLE = 120.0    # seconds before an idle UDP client mapping is removed
UDP_SOCKBUF = 4 << 20  # ask for big UDP socket buffers so bursts aren't lost in-kernel


class Link:
    """Timing model of one direction: computes when a chunk is delivered."""
    def __init__(self, args, rng):
        self.delay = args.delay_ms / 1000.0
        self.rate = args.rate_kbit * 1000.0 if args.rate_kbit else None  # bit/s
        self.loss = args.loss / 100.0
        self.rng = rng
        self.free_at = 0.0  # time the link finishes serializing the previous chunk

    def lost(self):
        return self.loss > 0 and self.rng.random() < self.loss

    def deliver_at(self, now, nbytes, stall=0.0):
        start = max(now, self.free_at) + stall  # can't start before previous finished
        self.free_at = start + (nbytes * 8 / self.rate if self.rate else 0.0)
        return self.free_at + self.delay        # monotonic => order preserved


# ----------------------------------------------------------------------------- TCP
async def pump_in(reader, link, q):
    """Read chunks, stamp each with its delivery time, queue them; EOF -> None."""
    loop = asyncio.get_running_loop()
    try:
        while data := await reader.read(CHUNK):
            stall = max(0.2, 2 * link.delay) if link.lost() else 0.0
            await q.put((link.deliver_at(loop.time(), len(data), stall), data))
    except OSError:
        pass  # reset by peer: treat as EOF
    await q.put((link.deliver_at(loop.time(), 0), None))  # FIN is delayed too


async def pump_out(q, writer):
    """Write each chunk when its delivery time comes; propagate EOF as half-close."""
    loop = asyncio.get_running_loop()
    while True:
        when, data = await q.get()
        if (wait := when - loop.time()) > 0:
            await asyncio.sleep(wait)  # timer-based (call_at), no busy waiting
        if data is None:
            if writer.can_write_eof():
                writer.write_eof()
            return
        writer.write(data)
        await writer.drain()  # raises if the peer is gone -> connection aborted


async def handle_tcp(creader, cwriter, args, rng):
    try:
        ureader, uwriter = await asyncio.open_connection(*args.target)
    except OSError as e:
        print(f"wan_relay: connect {args.target} failed: {e}", file=sys.stderr)
        cwriter.close()
        return
    tasks = []
    for reader, writer in ((creader, uwriter), (ureader, cwriter)):
        q, link = asyncio.Queue(TCP_BUF), Link(args, rng)
        tasks += [asyncio.create_task(pump_in(reader, link, q)),
                  asyncio.create_task(pump_out(q, writer))]
    try:  # ends when both directions finished (FIN each way) or a write failed
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except asyncio.CancelledError:
        pass  # relay shutdown (re-raising makes 3.11 start_server log a traceback)
    finally:
        for t in tasks:
            t.cancel()
        for w in (cwriter, uwriter):
            w.close()
        await asyncio.gather(*tasks, return_exceptions=True)


# ----------------------------------------------------------------------------- UDP
def udp_socket(family):
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setblocking(False)
    for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
        sock.setsockopt(socket.SOL_SOCKET, opt, UDP_SOCKBUF)  # kernel caps at *mem_max
    return sock


def read_all(recv, handle):
    """add_reader callback: hand over datagrams until the socket would block."""
    while True:
        try:
            pkt = recv(65535)
        except OSError:  # BlockingIOError = drained; others (ICMP errors) = retry later
            return
        handle(pkt)


class UdpLink(Link):
    """Link whose datagrams are released in order by a single call_at timer."""
    def __init__(self, args, rng, send):
        super().__init__(args, rng)
        self.send, self.q, self.timer = send, collections.deque(), None

    def push(self, data):
        if self.lost() or len(self.q) >= UDP_QLIMIT:
            return  # dropped (random loss or queue overflow); uses no bandwidth
        loop = asyncio.get_running_loop()
        self.q.append((self.deliver_at(loop.time(), len(data)), data))
        if self.timer is None:
            self.timer = loop.call_at(self.q[0][0], self._fire)

    def _fire(self):
        loop = asyncio.get_running_loop()
        self.timer = None
        while self.q and self.q[0][0] <= loop.time() + 0.0005:
            try:
                self.send(self.q.popleft()[1])
            except OSError:
                pass  # socket buffer full / ICMP error: datagram is lost
        if self.q:
            self.timer = loop.call_at(self.q[0][0], self._fire)

    def close(self):
        if self.timer:
            self.timer.cancel()


class UdpSession:
    """One client address <-> its own connected upstream socket to the target."""
    def __init__(self, relay, addr):
        self.relay, self.loop = relay, relay.loop
        self.sock = udp_socket(relay.tfam)
        self.sock.connect(relay.taddr)
        self.up = UdpLink(relay.args, relay.rng, self.sock.send)
        self.down = UdpLink(relay.args, relay.rng, lambda d: relay.front.sendto(d, addr))
        self.last = self.loop.time()
        self.loop.add_reader(self.sock, read_all, self.sock.recv, self.from_target)

    def from_target(self, data):
        self.last = self.loop.time()
        self.down.push(data)

    def close(self):
        self.loop.remove_reader(self.sock)
        self.sock.close()
        self.up.close()
        self.down.close()


class UdpRelay:
    def __init__(self, args, rng, loop):
        self.args, self.rng, self.loop, self.sessions = args, rng, loop, {}
        fam, _, _, _, laddr = socket.getaddrinfo(*args.listen, type=socket.SOCK_DGRAM)[0]
        self.tfam, _, _, _, self.taddr = socket.getaddrinfo(*args.target, type=socket.SOCK_DGRAM)[0]
        self.front = udp_socket(fam)
        self.front.bind(laddr)
        loop.add_reader(self.front, read_all, self.front.recvfrom, self.from_client)
        self.sweeper = loop.call_later(UDP_IDLE / 4, self.sweep)

    def from_client(self, pkt):
        data, addr = pkt
        if (s := self.sessions.get(addr)) is None:  # new client -> new upstream socket
            s = self.sessions[addr] = UdpSession(self, addr)
        s.last = self.loop.time()
        s.up.push(data)

    def sweep(self):  # forget client mappings idle for UDP_IDLE seconds
        for addr, s in list(self.sessions.items()):
            if self.loop.time() - s.last > UDP_IDLE:
                self.sessions.pop(addr).close()
        self.sweeper = self.loop.call_later(UDP_IDLE / 4, self.sweep)

    def close(self):
        self.sweeper.cancel()
        for s in self.sessions.values():
            s.close()
        self.loop.remove_reader(self.front)
        self.front.close()


# ----------------------------------------------------------------------------- main
def hostport(s):
    host, _, port = s.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {s!r}")
    return host.strip("[]"), int(port)


async def main():
    p = argparse.ArgumentParser(description="userspace WAN link emulator")
    p.add_argument("--listen", type=hostport, required=True)
    p.add_argument("--target", type=hostport, required=True)
    p.add_argument("--proto", choices=("tcp", "udp"), required=True)
    p.add_argument("--delay-ms", type=float, required=True, help="one-way delay")
    p.add_argument("--rate-kbit", type=float, help="per-direction rate limit")
    p.add_argument("--loss", type=float, default=0.0, help="loss percent")
    p.add_argument("--seed", type=int, help="RNG seed for reproducible loss")
    args = p.parse_args()
    rng, loop, stop = random.Random(args.seed), asyncio.get_running_loop(), asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if args.proto == "tcp":
        server = await asyncio.start_server(
            lambda r, w: handle_tcp(r, w, args, rng), *args.listen, reuse_address=True)
        port = server.sockets[0].getsockname()[1]
    else:
        server = UdpRelay(args, rng, loop)
        port = server.front.getsockname()[1]
    host = f"[{args.listen[0]}]" if ":" in args.listen[0] else args.listen[0]
    print(f"wan_relay listening on {host}:{port}", flush=True)
    await stop.wait()
    server.close()  # remaining connection tasks are cancelled by asyncio.run()


if __name__ == "__main__":
    asyncio.run(main())  # returns (exit status 0) after SIGTERM/SIGINT
