#!/usr/bin/env python3
"""Draws Hopwire's icon (three hops on a disc) as PNGs of each size Tauri
uses; run once, the PNGs are committed. Standard library only."""
import math
import os
import struct
import zlib


def png(size):
    disc = (31, 111, 235)
    white = (255, 255, 255)
    hops = [(0.27, 0.70), (0.50, 0.40), (0.74, 0.62)]
    rows = []
    for y in range(size):
        row = bytearray([0])
        for x in range(size):
            u, v = (x + 0.5) / size, (y + 0.5) / size
            d = math.hypot(u - 0.5, v - 0.5)
            alpha = max(0.0, min(1.0, (0.48 - d) * size))
            color = disc
            # The path between the hops, then the hops.
            for (ax, ay), (bx, by) in zip(hops, hops[1:]):
                t = max(0.0, min(1.0, ((u - ax) * (bx - ax) + (v - ay) * (by - ay)) / ((bx - ax) ** 2 + (by - ay) ** 2)))
                if math.hypot(u - (ax + t * (bx - ax)), v - (ay + t * (by - ay))) < 0.035:
                    color = white
            if any(math.hypot(u - hx, v - hy) < 0.085 for hx, hy in hops):
                color = white
            row += bytes(color) + bytes([int(alpha * 255)])
        rows.append(bytes(row))
    raw = zlib.compress(b"".join(rows), 9)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0))
        + chunk(b"IDAT", raw)
        + chunk(b"IEND", b"")
    )


here = os.path.dirname(os.path.abspath(__file__))
for name, size in [("32x32.png", 32), ("128x128.png", 128), ("icon.png", 256)]:
    with open(os.path.join(here, name), "wb") as f:
        f.write(png(size))
