"""The session across the boundary without a network: what it answers from
memory, the typed errors of bad input, calls after close, a listener that
throws, two sessions in one process. No root needed."""

import asyncio
import gc
import threading

import pytest


@pytest.fixture
def host_parts(hw):
    class Provider(hw.TunnelProvider):
        def __init__(self):
            self.calls = 0

        def establish(self, settings):
            self.calls += 1
            raise RuntimeError("no tunnel offline")

        def teardown(self):
            pass

    class Protector(hw.SocketProtector):
        def protect(self, fd):
            return True

    class Recorder(hw.EventListener):
        def __init__(self, throw=False):
            self.events = []
            self.threads = set()
            self.throw = throw
            self.seen = threading.Event()

        def on_event(self, event):
            self.events.append(event)
            self.threads.add(threading.get_ident())
            self.seen.set()
            if self.throw:
                raise ValueError("a listener that throws")

    return Provider, Protector, Recorder


def new_session(hw, parts, state_dir, listener=None, **config):
    Provider, Protector, _ = parts
    return hw.Session(hw.SessionConfig(state_dir=str(state_dir), **config), Provider(), Protector(), listener)


def test_a_fresh_session_is_disconnected_with_default_settings_and_keeps_a_change(hw, host_parts, tmp_path):
    s = new_session(hw, host_parts, tmp_path / "state")
    status = s.status()
    assert status.state == hw.State.DISCONNECTED
    assert status.circuit == [] and status.bytes_sent == 0 and status.fail_closed is None
    assert s.settings() == hw.Settings(lockdown=False, allow_lan=False, ipv6=True, dns=[])
    changed = s.change_settings(hw.SettingsChange(allow_lan=True, dns=["9.9.9.9", "2620:fe::fe"]))
    assert changed == hw.Settings(lockdown=False, allow_lan=True, ipv6=True, dns=["9.9.9.9", "2620:fe::fe"])
    assert s.status().settings == changed
    asyncio.run(s.shutdown())
    # The settings are the state directory's: a new session finds them.
    again = new_session(hw, host_parts, tmp_path / "state")
    assert again.settings() == changed
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
    asyncio.run(again.shutdown())


def test_bad_input_is_a_typed_error_not_a_crash(hw, host_parts, tmp_path):
    with pytest.raises(hw.HopwireError.BadInput, match="bootstrap peer"):
        new_session(hw, host_parts, tmp_path / "a", bootstrap=["not a multiaddr"])
    with pytest.raises(hw.HopwireError.BadInput, match="ledger"):
        new_session(hw, host_parts, tmp_path / "b", ledger="nowhere")
    with pytest.raises(hw.HopwireError.BadInput, match="state_dir"):
        new_session(hw, host_parts, "")
    with pytest.raises(hw.HopwireError.BadInput, match="log filter"):
        new_session(hw, host_parts, tmp_path / "c", log_filter="[[[")
    with pytest.raises(hw.HopwireError.BadInput, match="deposit_mib"):
        new_session(hw, host_parts, tmp_path / "d", deposit_mib=0)
    s = new_session(hw, host_parts, tmp_path / "e")
    with pytest.raises(hw.HopwireError.BadInput, match="not an IP address"):
        s.change_settings(hw.SettingsChange(dns=["resolver.example"]))

    async def calls():
        with pytest.raises(hw.HopwireError.BadInput, match="hops must be 1 to 3"):
            await s.connect(hw.ConnectOptions(hops=4))
        with pytest.raises(hw.HopwireError.BadInput):
            await s.connect(hw.ConnectOptions(records=["hopwire1.garbage"]))
        # No bootstrap peers and no records: no exit is known.
        with pytest.raises(hw.HopwireError.NoExit, match="bootstrap peers"):
            await s.connect(hw.ConnectOptions())
        # No ledger: no wallet.
        with pytest.raises(hw.HopwireError.Config, match="no wallet"):
            await s.wallet(False)
        await s.shutdown()

    asyncio.run(calls())


def test_a_connect_that_finds_no_exit_fails_with_its_kind_and_leaves_the_state_alone(hw, host_parts, tmp_path):
    Provider, Protector, Recorder = host_parts
    listener = Recorder()
    s = new_session(hw, host_parts, tmp_path / "state", listener=listener)

    async def go():
        with pytest.raises(hw.HopwireError.NoExit) as e:
            await s.connect(hw.ConnectOptions(country="zz"))
        assert "ZZ" in str(e.value)
        assert s.status().state == hw.State.DISCONNECTED
        await s.shutdown()

    asyncio.run(go())
    states = [e.state for e in listener.events if isinstance(e, hw.Event.STATE)]
    assert all(isinstance(st, hw.TunnelState.DISCONNECTED) for st in states), states
    # Every event came on the session's thread, not the caller's.
    assert listener.events and threading.get_ident() not in listener.threads


def test_calls_after_close_are_a_typed_error_and_close_twice_is_harmless(hw, host_parts, tmp_path):
    s = new_session(hw, host_parts, tmp_path / "state")

    async def go():
        await s.shutdown()
        await s.shutdown()
        with pytest.raises(hw.HopwireError.Closed):
            await s.connect(hw.ConnectOptions())
        with pytest.raises(hw.HopwireError.Closed):
            await s.disconnect()
        with pytest.raises(hw.HopwireError.Closed):
            await s.nodes(None, None)
        with pytest.raises(hw.HopwireError.Closed):
            await s.wallet(True)

    asyncio.run(go())
    with pytest.raises(hw.HopwireError.Closed):
        s.status()
    with pytest.raises(hw.HopwireError.Closed):
        s.settings()
    with pytest.raises(hw.HopwireError.Closed):
        s.change_settings(hw.SettingsChange(lockdown=True))


def test_a_listener_that_throws_still_hears_every_event(hw, host_parts, tmp_path):
    Provider, Protector, Recorder = host_parts
    listener = Recorder(throw=True)
    s = new_session(hw, host_parts, tmp_path / "state", listener=listener)
    for i in range(5):
        s.change_settings(hw.SettingsChange(allow_lan=i % 2 == 0))
    asyncio.run(s.shutdown())
    settings = [e for e in listener.events if isinstance(e, hw.Event.SETTINGS)]
    assert [e.settings.allow_lan for e in settings] == [True, False, True, False, True]
    # close delivered the last state (disconnected) before it returned.
    assert isinstance(listener.events[-1], hw.Event.STATE)


def test_two_sessions_in_one_process_are_independent(hw, host_parts, tmp_path):
    a = new_session(hw, host_parts, tmp_path / "a", log_filter="debug", log_file=str(tmp_path / "a.log"))
    b = new_session(hw, host_parts, tmp_path / "b", log_filter="info", log_file=str(tmp_path / "b.log"))
    a.change_settings(hw.SettingsChange(lockdown=True))
    assert b.settings().lockdown is False
    asyncio.run(a.shutdown())
    assert b.status().state == hw.State.DISCONNECTED
    asyncio.run(b.shutdown())
    # Each session logged to its own file.
    assert "settings changed" in (tmp_path / "a.log").read_text()
    assert "settings changed" not in (tmp_path / "b.log").read_text()


def test_a_session_the_host_drops_is_closed(hw, host_parts, tmp_path):
    Provider, Protector, Recorder = host_parts
    listener = Recorder()
    s = new_session(hw, host_parts, tmp_path / "state", listener=listener)
    s.change_settings(hw.SettingsChange(ipv6=False))
    del s
    gc.collect()
    # Dropping closed it: its state directory can be opened again.
    again = new_session(hw, host_parts, tmp_path / "state")
    assert again.settings().ipv6 is False
    asyncio.run(again.shutdown())
