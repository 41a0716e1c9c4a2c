#!/usr/bin/env python3
"""The testnet's pretend internet host: HTTP and DNS on one address.

Serves files from a directory over HTTP/1.1 (port 80) and answers DNS A
queries (port 53): every name under `hopwire.test` resolves to this host,
anything else is NXDOMAIN. Each HTTP request's peer address is appended to
the access log as `PEER_IP PATH`, so tests can tell who the host saw.

Usage: inet.py ADDRESS WWW_DIR ACCESS_LOG
Only the standard library; it never reaches beyond the address it binds.
"""
import functools
import http.server
import socket
import struct
import sys
import threading

ADDRESS, WWW, LOG = sys.argv[1], sys.argv[2], sys.argv[3]
DOMAIN = b"hopwire.test"
log_lock = threading.Lock()


class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        with log_lock, open(LOG, "a") as f:
            f.write(f"{self.client_address[0]} {self.path}\n")


def dns_answer(query: bytes):
    if len(query) < 12:
        return None
    tid, flags, qd = struct.unpack("!HHH", query[:6])
    if flags & 0x8000 or qd != 1:
        return None
    labels, i = [], 12
    while i < len(query) and query[i] != 0:
        n = query[i]
        labels.append(query[i + 1 : i + 1 + n].lower())
        i += 1 + n
    if i + 5 > len(query):
        return None
    qtype, _qclass = struct.unpack("!HH", query[i + 1 : i + 5])
    question = query[12 : i + 5]
    name = b".".join(labels)
    ours = name == DOMAIN or name.endswith(b"." + DOMAIN)
    if not ours:
        return struct.pack("!HHHHHH", tid, 0x8183, 1, 0, 0, 0) + question
    if qtype != 1:  # only A records; an empty answer for the rest
        return struct.pack("!HHHHHH", tid, 0x8580, 1, 0, 0, 0) + question
    answer = struct.pack("!HHHIH", 0xC00C, 1, 1, 60, 4) + socket.inet_aton(ADDRESS)
    return struct.pack("!HHHHHH", tid, 0x8580, 1, 1, 0, 0) + question + answer


def serve_dns():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((ADDRESS, 53))
    while True:
        query, peer = s.recvfrom(4096)
        reply = dns_answer(query)
        if reply:
            s.sendto(reply, peer)


threading.Thread(target=serve_dns, daemon=True).start()
handler = functools.partial(Handler, directory=WWW)
http.server.ThreadingHTTPServer((ADDRESS, 80), handler).serve_forever()
