# Linearizability clients for tools/lab (TestScenarioLinearizable).
#
# usage: linclient.py URI CLIENTS BLOCKS MAX_SECONDS OUT
#
# First zeroes BLOCKS blocks of 4 KiB through one connection (the
# registers' initial value, 0, written before any recorded operation
# starts), prints "ready", then runs CLIENTS threads, each with its own
# libnbd connection to URI, reading and writing random blocks until stdin
# is closed or MAX_SECONDS pass. A failed operation drops the connection
# and the thread reconnects (the VIP moves during a failover). Every
# operation is written to OUT as a JSON line:
#   [client, "w"|"r", block, value, call_ns, return_ns, ok]
# where a read's value is -1 when the block mixed two values (torn).
import json
import random
import socket
import struct
import sys
import threading
import time
import urllib.parse

import nbd

BLOCK = 4096
WORDS = BLOCK // 8

uri, nclients, nblocks, maxsecs, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
stop = threading.Event()


def connect():
    # Our own socket, for its timeouts: a server that dies with its link
    # (a fenced node) sends no FIN, and a request it had already received
    # would wait for its reply for ever. Keepalives and TCP_USER_TIMEOUT
    # end such a connection within seconds; the next one reaches the VIP's
    # new holder.
    u = urllib.parse.urlparse(uri)
    while not stop.is_set():
        try:
            sock = socket.create_connection((u.hostname, u.port), timeout=1)
            sock.settimeout(None)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, 3)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, 3000)
            h = nbd.NBD()
            h.set_export_name(u.path.lstrip("/"))
            h.connect_socket(sock.detach())
            return h
        except (OSError, nbd.Error):
            time.sleep(0.05)
    return None


def client(cid, log):
    rnd = random.Random(cid)
    h = None
    seq = 0
    while not stop.is_set():
        if h is None:
            h = connect()
            if h is None:
                return
        seq += 1
        blk = rnd.randrange(nblocks)
        if rnd.random() < 0.5:
            val = (cid + 1) << 40 | seq
            buf = struct.pack("<Q", val) * WORDS
            call = time.monotonic_ns()
            try:
                h.pwrite(buf, blk * BLOCK)
                ok = True
            except nbd.Error:
                ok = False
            log.append([cid, "w", blk, val, call, time.monotonic_ns(), ok])
        else:
            call = time.monotonic_ns()
            try:
                data = h.pread(BLOCK, blk * BLOCK)
                ok = True
            except nbd.Error:
                ok = False
            ret = time.monotonic_ns()
            val = 0
            if ok:
                words = struct.unpack("<%dQ" % WORDS, data)
                val = words[0] if words.count(words[0]) == WORDS else -1
            log.append([cid, "r", blk, val, call, ret, ok])
        if not ok:
            h = None  # libnbd closes the handle when it is collected
            time.sleep(0.1)
    if h is not None:
        h.shutdown()


def main():
    h = connect()
    zero = bytes(BLOCK)
    for b in range(nblocks):
        h.pwrite(zero, b * BLOCK)
    h.flush()
    h.shutdown()
    print("ready", flush=True)
    logs = [[] for _ in range(nclients)]
    threads = [threading.Thread(target=client, args=(i, logs[i])) for i in range(nclients)]
    for t in threads:
        t.start()
    watcher = threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True)
    watcher.start()
    stop.wait(maxsecs)
    stop.set()
    for t in threads:
        t.join()
    with open(out, "w") as f:
        for log in logs:
            for op in log:
                f.write(json.dumps(op) + "\n")
    print("done", sum(len(l) for l in logs), flush=True)


main()
