#!/usr/bin/env python3
"""The testnet's pretend internet host: HTTP and DNS on one address.

Serves files from a directory over HTTP/1.1 (port 80, on the IPv4 address
and, if given, an IPv6 one) and answers DNS A queries over UDP and TCP
(port 53): every name under `hopwire.test` resolves to this host, anything
else is NXDOMAIN. Each HTTP request's peer address is appended to the
access log as `PEER_IP PATH`, so tests can tell who the host saw.

Usage: inet.py ADDRESS WWW_DIR ACCESS_LOG [ADDRESS_V6]
Only the standard library; it never reaches beyond the addresses it binds.
"""
import functools
import http.server
import socket
import struct
import sys
import threading

ADDRESS, WWW, LOG = sys.argv[1], sys.argv[2], sys.argv[3]
ADDRESS_V6 = sys.argv[4] if len(sys.argv) > 4 else None
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


def recv_exact(conn, n):
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def serve_dns_tcp_client(conn):
    with conn:
        conn.settimeout(10)
        try:
            while True:
                head = recv_exact(conn, 2)
                if head is None:
                    return
                query = recv_exact(conn, struct.unpack("!H", head)[0])
                reply = dns_answer(query) if query else None
                if not reply:
                    return
                conn.sendall(struct.pack("!H", len(reply)) + reply)
        except OSError:
            return


def serve_dns_tcp():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((ADDRESS, 53))
    s.listen(64)
    while True:
        conn, _ = s.accept()
        threading.Thread(target=serve_dns_tcp_client, args=(conn,), daemon=True).start()


class HTTPServerV6(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6


threading.Thread(target=serve_dns, daemon=True).start()
threading.Thread(target=serve_dns_tcp, daemon=True).start()
handler = functools.partial(Handler, directory=WWW)
if ADDRESS_V6:
    v6 = HTTPServerV6((ADDRESS_V6, 80), handler)
    threading.Thread(target=v6.serve_forever, daemon=True).start()
http.server.ThreadingHTTPServer((ADDRESS, 80), handler).serve_forever()
