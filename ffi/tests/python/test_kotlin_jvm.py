"""The Kotlin bindings and the platform-neutral controller
(mobile/shared/…/HopwireController.kt) compiled with kotlinc and run on the
JVM against the real library, in a testnet's client namespace
(ffi/tests/kotlin/JvmHost.kt does the steps and checks; this drives it).

kotlinc comes from the npm registry's kotlin-compiler (ffi/tests/kotlin,
installed by scripts/setup.sh); JNA from Debian's libjna-java."""

import hashlib
import os
import subprocess

import pytest

from conftest import LIBRARY, ROOT, TARGET, Testnet

KOTLIN = ROOT / "ffi" / "tests" / "kotlin"
KOTLINC_HOME = KOTLIN / "node_modules" / "kotlin-compiler"
JNA = "/usr/share/java/jna.jar"
SOURCES = [
    ROOT / "ffi" / "bindings" / "kotlin" / "net" / "hopwire" / "core" / "hopwire_ffi.kt",
    ROOT / "mobile" / "shared" / "net" / "hopwire" / "mobile" / "HopwireController.kt",
    KOTLIN / "JvmHost.kt",
]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces and TUN devices")


@pytest.fixture(scope="module")
def jar():
    """The sources compiled into one jar, kept under target/ by their hash."""
    kotlinc = KOTLINC_HOME / "bin" / "kotlinc"
    if not kotlinc.exists():
        pytest.fail(f"{kotlinc} is missing: run scripts/setup.sh (npm ci in ffi/tests/kotlin)")
    if not os.path.exists(JNA):
        pytest.fail(f"{JNA} is missing: apt-get install libjna-java (scripts/setup.sh does)")
    digest = hashlib.sha256()
    for source in SOURCES:
        digest.update(source.read_bytes())
    digest.update((KOTLINC_HOME / "build.txt").read_bytes())
    out = TARGET / "kotlin-jvm" / f"{digest.hexdigest()[:16]}.jar"
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        classpath = f"{JNA}:{KOTLINC_HOME / 'lib' / 'kotlinx-coroutines-core-jvm.jar'}"
        done = subprocess.run(
            [str(kotlinc), "-nowarn", "-cp", classpath, *map(str, SOURCES), "-d", str(out) + ".tmp.jar"],
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, f"kotlinc failed:\n{done.stderr[-5000:]}"
        os.rename(str(out) + ".tmp.jar", out)
    return out


@pytest.fixture(scope="module")
def testnet():
    tn = Testnet("hwy2")
    try:
        tn.stop_daemon()
        yield tn
    finally:
        tn.down()


def test_the_kotlin_controller_connects_with_its_own_tun_fd_sees_the_events_and_disconnects(jar, testnet, tmp_path):
    tn = testnet
    body = bytes(i % 253 for i in range(1 << 20)) * 4
    (tn.dir / "www" / "kotlin.bin").write_bytes(body)
    classpath = ":".join(
        [
            str(jar),
            JNA,
            str(KOTLINC_HOME / "lib" / "kotlin-stdlib.jar"),
            str(KOTLINC_HOME / "lib" / "kotlinx-coroutines-core-jvm.jar"),
        ]
    )
    log = tmp_path / "session.log"
    done = tn.in_client(
        "java",
        f"-Djna.library.path={LIBRARY.parent}",
        "-cp",
        classpath,
        "net.hopwire.test.JvmHostKt",
        tn.summary["client"]["state_dir"],
        tn.summary["ledger"]["addr"],
        tn.summary["bootstrap"]["dht_addr"],
        "http://198.18.0.10/kotlin.bin",
        hashlib.sha256(body).hexdigest(),
        str(log),
        timeout=240,
    )
    report = f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-4000:]}\nsession log:\n{log.read_text()[-3000:] if log.exists() else ''}"
    assert done.returncode == 0, report
    for step in [
        "ok: a session, disconnected",
        "ok: nodes:",
        "ok: bad input is HopwireException.BadInput",
        "ok: connected through",
        "ok: the view says: Connected",
        "ok: downloaded 4194304 bytes through the tunnel, byte-exact",
        "ok: disconnected; the provider heard teardown",
        "ok: events: Connecting → Connected",
        "ok: shut down",
    ]:
        assert step in done.stdout, f"missing `{step}`\n{report}"
