"""A mobile host played on Linux, over the Python bindings: what Android's
VpnService does for the app, done with a TUN device, SO_MARK and an ip rule.

    host.py CONFIG_JSON

runs in a testnet's client namespace, makes a hopwire_ffi.Session and
obeys JSON commands, one per line on stdin; it answers each with one JSON
line on stdout ({"reply": …} or {"error": {"kind": …, "message": …}}).
Events and what the host itself saw ({"event": …}, {"host": …}) come on
stdout too, as they happen.

The tunnel provider makes a fresh TUN device per establish (as Android
makes a new interface), addresses it, and routes everything not carrying
the protect mark into it (ip rule "not fwmark MARK lookup TABLE"); it hands
the session the descriptor. The protector sets SO_MARK on the socket, so
it leaves through the main table, around the tunnel: the Linux analogue of
VpnService.protect(). CONFIG_JSON (and the command "provider") chooses
misbehaviour for the tests: a provider that returns a bad descriptor or
throws, a protector that refuses, a listener that throws.
"""

import asyncio
import enum
import fcntl
import json
import os
import socket
import struct
import subprocess
import sys
import threading

import hopwire_ffi as hw

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
SO_MARK = 36

out_lock = threading.Lock()


def say(obj):
    with out_lock:
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()


def plain(value):
    """A binding value as JSON: records and enum variants as dicts with
    their type, simple enums as lower-case names."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, enum.Enum):
        return value.name.lower()
    fields = {k: plain(v) for k, v in vars(value).items() if not k.startswith("_")}
    # Variants are nested classes (Event.STATE): the variant's name.
    fields["type"] = type(value).__name__.rsplit(".", 1)[-1].lower()
    return fields


def ip(*args):
    done = subprocess.run(["ip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")


def open_tun(name, flags):
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), flags))
    except OSError:
        os.close(fd)
        raise
    return fd


class Provider(hw.TunnelProvider):
    def __init__(self, config):
        self.mode = config.get("provider", "tun")
        self.base = config.get("tun", "hwtun")
        self.mark = config["mark"]
        self.table = str(config["table"])
        self.count = 0
        self.rules = False

    def establish(self, settings):
        say({"host": "establish", "settings": plain(settings)})
        if self.mode == "throw":
            raise RuntimeError("the user refused the VPN permission")
        if self.mode == "negative":
            return -1
        if self.mode == "closed":
            fd = os.open("/dev/null", os.O_RDONLY)
            os.close(fd)
            return fd
        if self.mode == "pipe":
            r, _w = os.pipe()
            return r
        name = f"{self.base}{self.count}"
        self.count += 1
        fd = open_tun(name, IFF_TUN | IFF_NO_PI)
        ip("addr", "add", f"{settings.inner_v4}/32", "dev", name)
        if settings.inner_v6:
            ip("-6", "addr", "add", f"{settings.inner_v6}/128", "dev", name, "nodad")
        ip("link", "set", name, "mtu", str(settings.mtu), "up")
        for route in settings.routes:
            family = "-6" if ":" in route.address else "-4"
            ip(family, "route", "replace", f"{route.address}/{route.prefix}", "dev", name, "table", self.table)
        if not self.rules:
            for family in ("-4", "-6"):
                ip(family, "rule", "add", "not", "fwmark", hex(self.mark), "lookup", self.table, "priority", "100")
            self.rules = True
        say({"host": "established", "device": name, "fd": fd})
        # The session owns the descriptor from here on.
        return fd

    def teardown(self):
        if self.rules:
            for family in ("-4", "-6"):
                try:
                    ip(family, "rule", "del", "not", "fwmark", hex(self.mark), "lookup", self.table, "priority", "100")
                except RuntimeError as e:
                    say({"host": "teardown-error", "message": str(e)})
            self.rules = False
        say({"host": "teardown"})


class Protector(hw.SocketProtector):
    def __init__(self, config):
        self.refuse = config.get("protector") == "refuse"
        self.mark = config["mark"]

    def protect(self, fd):
        if self.refuse:
            say({"host": "protect", "fd": fd, "ok": False})
            return False
        try:
            s = socket.socket(fileno=os.dup(fd))
            try:
                s.setsockopt(socket.SOL_SOCKET, SO_MARK, self.mark)
                family = s.family.name
            finally:
                s.close()
        except OSError as e:
            say({"host": "protect", "fd": fd, "ok": False, "error": str(e)})
            return False
        say({"host": "protect", "fd": fd, "ok": True, "family": family})
        return True


class Listener(hw.EventListener):
    def __init__(self, config):
        self.throw = config.get("listener") == "throw"

    def on_event(self, event):
        say({"event": plain(event)})
        if self.throw:
            raise ValueError("a listener that throws")


def sockets():
    """This process's IP sockets: family, protocol, addresses and mark."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            s = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue
        try:
            if s.family not in (socket.AF_INET, socket.AF_INET6):
                continue
            try:
                peer = s.getpeername()
            except OSError:
                peer = None
            found.append(
                {
                    "fd": int(name),
                    "family": s.family.name,
                    "type": s.type.name,
                    "local": list(s.getsockname()[:2]),
                    "peer": list(peer[:2]) if peer else None,
                    "mark": s.getsockopt(socket.SOL_SOCKET, SO_MARK),
                }
            )
        finally:
            s.close()
    return found


async def serve(config):
    provider = Provider(config)
    session = hw.Session(
        hw.SessionConfig(
            state_dir=config["state_dir"],
            bootstrap=config.get("bootstrap", []),
            ledger=config.get("ledger"),
            deposit_mib=config.get("deposit_mib", 1024),
            log_filter=config.get("log_filter", "info"),
            log_file=config.get("log_file"),
        ),
        provider,
        Protector(config),
        Listener(config),
    )
    loop = asyncio.get_running_loop()
    say({"host": "ready", "pid": os.getpid()})
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        request = json.loads(line)
        cmd = request["cmd"]
        try:
            if cmd == "connect":
                options = hw.ConnectOptions(
                    country=request.get("country"),
                    hops=request.get("hops", 3),
                    max_price_per_gib=request.get("max_price"),
                    records=request.get("records", []),
                )
                reply = await session.connect(options)
            elif cmd == "disconnect":
                reply = await session.disconnect()
            elif cmd == "status":
                reply = session.status()
            elif cmd == "nodes":
                role = request.get("role")
                reply = await session.nodes(getattr(hw.NodeRole, role.upper()) if role else None, request.get("country"))
            elif cmd == "wallet":
                reply = await session.wallet(request.get("close_idle", False))
            elif cmd == "settings":
                reply = session.settings()
            elif cmd == "shutdown":
                reply = await session.shutdown()
            elif cmd == "sockets":
                reply = sockets()
            elif cmd == "provider":
                provider.mode = request["mode"]
                reply = None
            elif cmd == "quit":
                say({"reply": None})
                break
            else:
                raise ValueError(f"unknown command {cmd}")
            say({"reply": plain(reply)})
        except hw.HopwireError as e:
            say({"error": {"kind": type(e).__name__, "message": str(e)}})
    del session


def main():
    config = json.loads(sys.argv[1])
    asyncio.run(serve(config))


if __name__ == "__main__":
    main()
