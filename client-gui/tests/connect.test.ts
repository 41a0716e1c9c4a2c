import { afterEach, describe, expect, test } from "vitest";
import { Backend, HOPS, connected, setValue, start, status, stop, visible } from "./harness";

afterEach(stop);

describe("connect screen", () => {
  test("disconnected: says so and offers Connect", async () => {
    const ui = await start();
    expect(ui.text("#state")).toBe("disconnected");
    expect(ui.text("#connect-button")).toBe("Connect");
    expect(ui.text("#state-reason")).toContain("Not connected");
    expect(ui.text("#header-state")).toBe("disconnected");
    expect(visible(ui.$("#screen-connect"))).toBe(true);
    expect(ui.$("#tab-connect").getAttribute("aria-selected")).toBe("true");
    expect(visible(ui.$("#daemon-missing"))).toBe(false);
  });

  test("disconnected with lockdown says nothing leaves", async () => {
    const b = new Backend();
    b.status = status({ settings: { lockdown: true, allow_lan: false, ipv6: true, dns: [] } });
    const ui = await start(b);
    expect(ui.text("#state-reason")).toContain("Lockdown is on");
  });

  test("loads the remembered choice into the form and lists exit countries", async () => {
    const b = new Backend();
    b.choice = { country: "NL", hops: 2, max_price: 2_000_000 };
    const ui = await start(b);
    expect(b.called("choice")).toHaveLength(1);
    expect(b.called("nodes")[0].args).toEqual({ role: "exit", country: null });
    const country = ui.$("#country") as HTMLSelectElement;
    expect([...country.options].map((o) => o.value)).toEqual(["", "DE", "NL", "US"]);
    expect(country.options[0].textContent).toBe("Any");
    expect(country.value).toBe("NL");
    expect((ui.$("#hops") as HTMLSelectElement).value).toBe("2");
    expect((ui.$("#max-price") as HTMLInputElement).value).toBe("2,000,000");
    expect(ui.text("#max-price-hint")).toBe("At most 2,000,000 units/GiB.");
    expect(ui.text("#exits-hint")).toContain("3 exits known, from 1,000,000 units/GiB");
  });

  test("a remembered country no exit is known in stays selectable", async () => {
    const b = new Backend();
    b.choice = { country: "JP", hops: null, max_price: null };
    b.nodes = [];
    const ui = await start(b);
    const country = ui.$("#country") as HTMLSelectElement;
    expect([...country.options].map((o) => o.value)).toEqual(["", "JP"]);
    expect(country.value).toBe("JP");
    expect((ui.$("#hops") as HTMLSelectElement).value).toBe("3");
    expect(ui.text("#exits-hint")).toBe("No exits known yet.");
  });

  test("Connect invokes connect with the remembered choice", async () => {
    const b = new Backend();
    b.choice = { country: "DE", hops: 3, max_price: 3_000_000 };
    const ui = await start(b);
    await ui.click("#connect-button");
    expect(b.called("connect").map((c) => c.args)).toEqual([{ choice: { country: "DE", hops: 3, max_price: 3_000_000 } }]);
    // The answered status is used at once.
    expect(ui.text("#state")).toBe("connected");
    expect(ui.text("#connect-button")).toBe("Disconnect");
    expect(ui.text("#state-reason")).toContain("Exit in DE (feedfacecafe)");
    expect(ui.text("#state-reason")).toContain("3 hops");
    expect(ui.text("#state-reason")).toContain("built in 1.2 s");
  });

  test("Connect invokes connect with the edited choice", async () => {
    const b = new Backend();
    const ui = await start(b);
    setValue(ui.$("#country"), "US");
    setValue(ui.$("#hops"), "1");
    setValue(ui.$("#max-price"), "4 500 000", "input");
    expect(ui.text("#max-price-hint")).toBe("At most 4,500,000 units/GiB.");
    await ui.click("#connect-button");
    expect(b.called("connect")[0].args).toEqual({ choice: { country: "US", hops: 1, max_price: 4_500_000 } });
  });

  test("Any country and an empty cap are sent as null", async () => {
    const b = new Backend();
    const ui = await start(b);
    await ui.click("#connect-button");
    expect(b.called("connect")[0].args).toEqual({ choice: { country: null, hops: 3, max_price: null } });
  });

  test("an unreadable price cap is refused before anything is sent", async () => {
    const b = new Backend();
    const ui = await start(b);
    setValue(ui.$("#max-price"), "lots", "input");
    expect(ui.text("#max-price-hint")).toContain("Not a number");
    await ui.click("#connect-button");
    expect(b.called("connect")).toHaveLength(0);
    expect(visible(ui.$("#choice-error"))).toBe(true);
    expect(ui.text("#choice-error")).toContain("whole number");
    expect(ui.text("#state")).toBe("disconnected");
  });

  test("connecting: Cancel, and the elapsed time counts up", async () => {
    const b = new Backend();
    // The connect request stays open while the circuit is built.
    let answer: (s: unknown) => void = () => {};
    b.on("connect", () => new Promise((r) => (answer = r)));
    const ui = await start(b);
    await ui.click("#connect-button");
    expect(ui.text("#state")).toBe("connecting");
    expect(ui.text("#connect-button")).toBe("Cancel");
    expect(ui.text("#state-reason")).toContain("Asking the service for a 3-hop circuit to an exit in any country");
    expect(ui.text("#state-reason")).toContain("0 s so far");

    await ui.send({ type: "event", event: { event: "state", state: { state: "connecting" } } });
    expect(ui.text("#state-reason")).toContain("Building a 3-hop circuit");
    ui.clock.t += 7_000;
    ui.app.tick();
    expect(ui.text("#state-reason")).toContain("7 s so far");
    expect(ui.$("#state-reason").getAttribute("data-elapsed")).toBe("7");
    ui.clock.t += 65_000;
    ui.app.tick();
    expect(ui.text("#state-reason")).toContain("1 min 12 s so far");
    expect(ui.text("#state-advice")).toContain("gives up after 90 s");
    // The form cannot change under a running connect.
    expect((ui.$("#country") as HTMLSelectElement).disabled).toBe(true);

    answer(connected());
    await new Promise((r) => setTimeout(r, 0));
    await ui.send({ type: "event", event: { event: "state", state: { state: "connected" } } });
    expect(ui.text("#state")).toBe("connected");
    expect(ui.$("#state-reason").getAttribute("data-elapsed")).toBe("");
  });

  test("the timer redraws the elapsed time by itself", async () => {
    const b = new Backend();
    b.status = status({ state: "connecting" });
    const ui = await start(b);
    expect(ui.text("#state-reason")).toContain("0 s so far");
    ui.clock.t += 3_000;
    await new Promise((r) => setTimeout(r, 1100));
    expect(ui.text("#state-reason")).toContain("3 s so far");
  });

  test("Cancel while connecting invokes disconnect", async () => {
    const b = new Backend();
    b.status = status({ state: "connecting" });
    const ui = await start(b);
    expect(ui.text("#connect-button")).toBe("Cancel");
    await ui.click("#connect-button");
    expect(b.called("disconnect")).toHaveLength(1);
    expect(ui.text("#state")).toBe("disconnected");
    expect(ui.text("#connect-button")).toBe("Connect");
  });

  test("connected: Disconnect invokes disconnect and shows its status", async () => {
    const b = new Backend();
    b.status = connected();
    const ui = await start(b);
    expect(ui.text("#state")).toBe("connected");
    expect(ui.text("#state-reason")).toContain("address 10.77.0.2");
    await ui.click("#connect-button");
    expect(b.called("disconnect")).toHaveLength(1);
    expect(b.called("connect")).toHaveLength(0);
    expect(ui.text("#state")).toBe("disconnected");
  });

  test("reconnecting: shows the reason and the attempt", async () => {
    const ui = await start(Object.assign(new Backend(), { status: connected() }));
    await ui.send({
      type: "event",
      event: { event: "state", state: { state: "reconnecting", reason: "the guard stopped answering", attempt: 2 } },
    });
    expect(ui.text("#state")).toBe("reconnecting");
    expect(ui.text("#state-reason")).toContain("the guard stopped answering");
    expect(ui.text("#state-reason")).toContain("attempt 2");
    expect(ui.text("#state-reason")).toContain("0 s so far");
    expect(ui.text("#state-advice")).toContain("held back");
    expect(ui.text("#connect-button")).toBe("Disconnect");
    ui.clock.t += 4000;
    ui.app.tick();
    expect(ui.text("#state-reason")).toContain("4 s so far");
  });

  test("reconnecting from a whole status", async () => {
    const b = new Backend();
    b.status = status({ state: "reconnecting", error: "exit went away", attempt: 5 });
    const ui = await start(b);
    expect(ui.text("#state-reason")).toContain("exit went away");
    expect(ui.text("#state-reason")).toContain("attempt 5");
  });

  const kinds: [string, string, RegExp][] = [
    ["funds", "balance 10 does not cover 3 hops", /Top up the account/],
    ["no_exit", "no exit in ZZ under 5 units/GiB", /Pick another country, or raise the price cap/],
    ["hop_unreachable", "guard 198.51.100.1 timed out", /Try again/],
    ["ledger_unreachable", "ledger at 192.0.2.10:7000: connection refused", /ledger cannot be reached/],
    ["exit_refused", "exit said no", /pick another country/],
    ["platform", "TUN device: permission denied", /journalctl -u hopwire/],
  ];
  for (const [kind, message, what] of kinds) {
    test(`error ${kind}: the message and what to do`, async () => {
      const ui = await start();
      await ui.send({ type: "event", event: { event: "state", state: { state: "error", kind: kind as never, message } } });
      expect(ui.text("#state")).toBe("error");
      expect(ui.text("#state-reason")).toBe(message);
      expect(ui.text("#state-advice")).toMatch(what);
      expect(ui.text("#connect-button")).toBe("Connect");
      expect(ui.$("#screen-connect").getAttribute("data-state")).toBe("error");
    });
  }

  test("error from a whole status uses error_kind", async () => {
    const b = new Backend();
    b.status = status({ state: "error", error: "not enough", error_kind: "funds" });
    const ui = await start(b);
    expect(ui.text("#state-title")).toBe("Not enough funds");
    expect(ui.text("#state-advice")).toContain("Top up the account");
  });

  test("a rejected connect shows the error and what to do", async () => {
    const b = new Backend();
    b.reject("connect", { kind: "no_exit", message: "no exit matches country XX" });
    const ui = await start(b);
    await ui.click("#connect-button");
    expect(visible(ui.$("#command-error"))).toBe(true);
    expect(ui.text("#command-error")).toContain("Connect failed");
    expect(ui.text("#command-error")).toContain("no exit matches country XX");
    expect(ui.text("#command-error")).toContain("raise the price cap");
    expect(ui.$("#command-error").getAttribute("data-kind")).toBe("no_exit");
    // Not left "connecting" after the rejection.
    expect(ui.text("#state")).toBe("disconnected");
    expect(ui.text("#connect-button")).toBe("Connect");
    expect(ui.$("#state-reason").getAttribute("data-elapsed")).toBe("");
  });

  test("a rejection the daemon also reports as its state is said once", async () => {
    const b = new Backend();
    b.on("connect", async () => {
      await ui.send({ type: "event", event: { event: "state", state: { state: "error", kind: "funds", message: "balance too low" } } });
      throw { kind: "funds", message: "balance too low" };
    });
    const ui = await start(b);
    await ui.click("#connect-button");
    await new Promise((r) => setTimeout(r, 10));
    expect(ui.text("#state")).toBe("error");
    expect(ui.text("#state-reason")).toBe("balance too low");
    expect(visible(ui.$("#command-error"))).toBe(false);
  });

  test("a rejected bad_input connect shows the message", async () => {
    const b = new Backend();
    b.reject("connect", { kind: "bad_input", message: "a circuit has 1 to 3 hops, not 4" });
    const ui = await start(b);
    await ui.click("#connect-button");
    expect(ui.text("#command-error")).toContain("a circuit has 1 to 3 hops, not 4");
    expect(ui.text("#command-error")).toContain("Invalid choice");
  });

  test("a tray action's error shows on the connect screen", async () => {
    const ui = await start();
    const { emit } = await import("@tauri-apps/api/event");
    await emit("tray-error", { kind: "hop_unreachable", message: "middle timed out" });
    await new Promise((r) => setTimeout(r, 0));
    expect(ui.text("#command-error")).toContain("Tray action failed");
    expect(ui.text("#command-error")).toContain("middle timed out");
  });

  test("the state follows state events without any command", async () => {
    const ui = await start();
    await ui.send({ type: "event", event: { event: "state", state: { state: "connecting" } } });
    expect(ui.text("#state")).toBe("connecting");
    await ui.send({ type: "event", event: { event: "circuit", circuit: HOPS, build_ms: 800, inner_addr: "10.77.0.9", inner_v6: null, ipv6_blocked: null, mtu: 1380 } });
    await ui.send({ type: "event", event: { event: "state", state: { state: "connected" } } });
    expect(ui.text("#state")).toBe("connected");
    expect(ui.text("#state-reason")).toContain("built in 800 ms");
    await ui.send({ type: "event", event: { event: "state", state: { state: "disconnected" } } });
    expect(ui.text("#state")).toBe("disconnected");
    // Nothing was asked of the daemon but the start-up reads.
    expect(ui.backend.calls.map((c) => c.cmd).sort()).toEqual(["autostart", "choice", "nodes", "status"]);
  });
});
