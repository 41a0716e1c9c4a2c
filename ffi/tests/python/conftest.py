"""Fixtures for the Python tests of hopwire-ffi: the committed bindings
beside the built library, a testnet (the real nodes, ledger and DHT in
namespaces), and a host program (host.py) in the testnet's client
namespace, driven line by line.

Run from the repository root, as root, after `cargo build --workspace`:
    /usr/bin/python3 -m pytest -q ffi/tests/python
"""

import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
if not TARGET.is_absolute():
    TARGET = ROOT / TARGET
LIBRARY = TARGET / "debug" / "libhopwire_ffi.so"
HOPWIRE = TARGET / "debug" / "hopwire"
HOST = Path(__file__).resolve().parent / "host.py"
# The mark protected sockets carry and the routing table of the tunnel.
MARK = 0x6877
TABLE = 6877


@pytest.fixture(scope="session")
def bindings_dir():
    """A directory holding the generated module and the library beside it
    (the module loads the library from its own directory)."""
    if not LIBRARY.exists():
        pytest.fail(f"{LIBRARY} is missing: run `cargo build --workspace` first")
    d = Path(tempfile.mkdtemp(prefix="hopwire-ffi-py-"))
    (d / "hopwire_ffi.py").symlink_to(ROOT / "ffi" / "bindings" / "python" / "hopwire_ffi.py")
    (d / "libhopwire_ffi.so").symlink_to(LIBRARY)
    sys.path.insert(0, str(d))
    yield d
    sys.path.remove(str(d))
    for f in d.iterdir():
        f.unlink()
    d.rmdir()


@pytest.fixture(scope="session")
def hw(bindings_dir):
    import hopwire_ffi

    return hopwire_ffi


class Testnet:
    """`hopwire testnet --keep` under a prefix of its own; `down()` removes
    its namespaces and processes."""

    __test__ = False

    def __init__(self, prefix, size_mb=1):
        self.prefix = prefix
        self.down()
        done = subprocess.run(
            [str(HOPWIRE), "testnet", "--keep", "--json", "--prefix", prefix, "--size-mb", str(size_mb)],
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            self.down()
            raise RuntimeError(f"testnet failed: {done.stderr[-3000:]}")
        self.summary = json.loads(done.stdout)
        self.dir = Path(self.summary["dir"])
        self.client_ns = self.summary["namespaces"]["client"]

    def down(self):
        subprocess.run(
            [str(HOPWIRE), "testnet", "--down", "--prefix", self.prefix],
            capture_output=True,
            timeout=120,
        )

    def cli(self, *args):
        return subprocess.run(
            [str(HOPWIRE), "--socket", self.summary["client"]["socket"], *args],
            capture_output=True,
            text=True,
            timeout=60,
        )

    def stop_daemon(self):
        """The client daemon steps aside: the host takes its state
        directory (wallet and funds)."""
        self.cli("disconnect")
        pid = self.summary["client"]["pid"]
        kill_and_wait(pid)

    def node_pid(self, identity):
        for node in self.summary["nodes"]:
            if node["identity"] == identity:
                return node["pid"]
        raise KeyError(identity)

    def in_client(self, *cmd, timeout=120):
        return subprocess.run(
            ["ip", "netns", "exec", self.client_ns, *cmd], capture_output=True, text=True, timeout=timeout
        )


def kill_and_wait(pid, sig=15):
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    for _ in range(200):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise RuntimeError(f"process {pid} did not end")


class HostError(Exception):
    def __init__(self, kind, message):
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


class Host:
    """host.py in the client namespace; `call` sends a command and returns
    its reply (or raises HostError with the binding's error kind)."""

    def __init__(self, testnet, bindings_dir, log, **config):
        config.setdefault("mark", MARK)
        config.setdefault("table", TABLE)
        config.setdefault("state_dir", testnet.summary["client"]["state_dir"])
        config.setdefault("ledger", testnet.summary["ledger"]["addr"])
        config.setdefault("log_file", str(log))
        env = dict(os.environ, PYTHONPATH=str(bindings_dir), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", testnet.client_ns, sys.executable, str(HOST), json.dumps(config)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(str(log) + ".stderr", "w"),
            text=True,
            env=env,
        )
        self.log = Path(log)
        self.lines = queue.Queue()
        self.events = []
        self.host_notes = []
        self.replies = queue.Queue()
        self.lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()
        ready = self.wait_note(lambda n: n["host"] == "ready", 30)
        self.pid = ready["pid"]

    def _read(self):
        for line in self.proc.stdout:
            msg = json.loads(line)
            with self.lock:
                if "event" in msg:
                    self.events.append(msg["event"])
                elif "host" in msg:
                    self.host_notes.append(msg)
                else:
                    self.replies.put(msg)
        self.replies.put({"error": {"kind": "HostExited", "message": self.stderr_tail()}})

    def stderr_tail(self):
        try:
            return Path(str(self.log) + ".stderr").read_text()[-3000:]
        except OSError:
            return ""

    def call(self, cmd, timeout=120, **args):
        self.proc.stdin.write(json.dumps(dict(args, cmd=cmd)) + "\n")
        self.proc.stdin.flush()
        try:
            msg = self.replies.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{cmd}: no reply in {timeout} s; log: {self.log_tail()}")
        if "error" in msg:
            raise HostError(msg["error"]["kind"], msg["error"]["message"])
        return msg["reply"]

    def wait_event(self, pred, timeout, what="an event"):
        return self._wait(lambda: next((e for e in self.snapshot_events() if pred(e)), None), timeout, what)

    def wait_note(self, pred, timeout, what="a host note"):
        return self._wait(lambda: next((n for n in self.snapshot_notes() if pred(n)), None), timeout, what)

    def wait(self, find, timeout, what):
        """Polls `find` until it returns something other than None."""
        return self._wait(find, timeout, what)

    def _wait(self, find, timeout, what):
        deadline = time.time() + timeout
        while time.time() < deadline:
            found = find()
            if found is not None:
                return found
            if self.proc.poll() is not None:
                raise AssertionError(f"the host exited ({self.proc.returncode}) waiting for {what}: {self.stderr_tail()}")
            time.sleep(0.05)
        raise AssertionError(f"no {what} in {timeout} s; events {self.states()}; log: {self.log_tail()}")

    def snapshot_events(self):
        with self.lock:
            return list(self.events)

    def snapshot_notes(self):
        with self.lock:
            return list(self.host_notes)

    def states(self):
        """The state events so far, as the variant names."""
        return [e["state"]["type"] for e in self.snapshot_events() if e["type"] == "state"]

    def log_tail(self, n=3000):
        try:
            return self.log.read_text()[-n:]
        except OSError:
            return ""

    def stop(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.proc.stdin.flush()
                self.proc.wait(timeout=20)
            except (BrokenPipeError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def host_factory(bindings_dir, tmp_path):
    """Starts hosts; stops every one at the end of the test, even on failure."""
    hosts = []

    def start(testnet, name="host", **config):
        h = Host(testnet, bindings_dir, tmp_path / f"{name}.log", **config)
        hosts.append(h)
        return h

    yield start
    for h in hosts:
        h.stop()
