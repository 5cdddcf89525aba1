"""The client-visible outage's instrument, shared by bench/failover and the demo's first
act: a UDP echo service on each director that answers with its node's name, and a client
that sends a numbered request to the VIP every PERIOD and prints each reply's number, time
and sender. Both are small programs for `python -c`, run in a namespace."""

from __future__ import annotations

import shutil

PERIOD = 0.005  # the client's request period

RESPONDER = """
import socket, sys
name = sys.argv[1].encode()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", int(sys.argv[2])))
while True:
    data, addr = s.recvfrom(64)
    s.sendto(data[:8] + name, addr)
"""

CLIENT = """
import select, socket, struct, sys, time
vip, port, period = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setblocking(False)
seq, nxt, flushed, out = 0, time.monotonic(), 0.0, []
while True:
    now = time.monotonic()
    if now >= nxt:
        try:
            s.sendto(struct.pack("!Q", seq), (vip, port))
        except OSError:
            pass  # e.g. the VIP's ARP entry failed: keep trying
        seq += 1
        nxt = max(nxt + period, now)
    select.select([s], [], [], max(0.0, nxt - time.monotonic()))
    while True:
        try:
            data = s.recv(64)
        except OSError:
            break
        t = time.monotonic()
        out.append(f"{struct.unpack('!Q', data[:8])[0]} {t:.6f} {data[8:].decode()}\\n")
    if out and now - flushed > 0.02:
        sys.stdout.write("".join(out))
        sys.stdout.flush()
        out.clear()
        flushed = now
"""

# The instrument (client and echo service) runs SCHED_FIFO so that the host's other load
# does not show up as outage; the agents run as deployed (SCHED_FIFO by default).
RT = ["chrt", "-f", "20"] if shutil.which("chrt") else []
