import { afterEach, describe, expect, test } from "vitest";
import { Backend, connected, start, status, stop, visible } from "./harness";

afterEach(stop);

const MISSING = {
  kind: "daemon_missing",
  message: "The Hopwire service is not running (nothing answers at /run/hopwire/hopwire.sock). Start it: `sudo systemctl start hopwire`, or `sudo hopwire daemon`.",
};

describe("daemon missing", () => {
  test("a down update shows the full screen with the message; a status hides it", async () => {
    const ui = await start();
    expect(visible(ui.$("#daemon-missing"))).toBe(false);
    await ui.send({ type: "down", error: MISSING });
    expect(visible(ui.$("#daemon-missing"))).toBe(true);
    expect(ui.$("#daemon-missing").getAttribute("data-kind")).toBe("daemon_missing");
    expect(ui.text("#daemon-missing-title")).toBe("The Hopwire service is not running");
    expect(ui.text("#daemon-missing-message")).toBe(MISSING.message);
    // The message says how to start it; the hint adds what the message does not.
    expect(ui.text("#daemon-missing-message")).toContain("sudo systemctl start hopwire");
    expect(ui.text("#daemon-missing-hint")).not.toContain("systemctl start hopwire");
    expect(ui.text("#daemon-missing-hint")).toContain("enable --now hopwire");
    expect(ui.text("#daemon-missing-hint")).toContain("hopwire group");
    expect(ui.text("#daemon-missing-note")).toContain("as soon as the service answers");
    await ui.send({ type: "status", status: connected() });
    expect(visible(ui.$("#daemon-missing"))).toBe(false);
    expect(ui.text("#state")).toBe("connected");
  });

  test("events alone do not hide it; only a status does", async () => {
    const ui = await start();
    await ui.send({ type: "down", error: MISSING });
    await ui.send({ type: "event", event: { event: "state", state: { state: "connecting" } } });
    expect(visible(ui.$("#daemon-missing"))).toBe(true);
  });

  test("a status command rejected at start shows it", async () => {
    const b = new Backend();
    b.reject("status", MISSING);
    b.reject("nodes", MISSING);
    const ui = await start(b);
    expect(visible(ui.$("#daemon-missing"))).toBe(true);
    expect(ui.text("#daemon-missing-message")).toBe(MISSING.message);
  });

  test("a command rejected with daemon_missing shows it (not an inline error)", async () => {
    const b = new Backend();
    b.reject("connect", MISSING);
    const ui = await start(b);
    await ui.click("#connect-button");
    expect(visible(ui.$("#daemon-missing"))).toBe(true);
    expect(visible(ui.$("#command-error"))).toBe(false);
    expect(ui.text("#state")).toBe("disconnected");
  });

  test("Check again asks for the status and carries on when it answers", async () => {
    const b = new Backend();
    b.reject("status", MISSING);
    const ui = await start(b);
    await ui.click("#daemon-retry");
    expect(visible(ui.$("#daemon-missing"))).toBe(true);
    b.on("status", () => status({ state: "disconnected" }));
    await ui.click("#daemon-retry");
    expect(visible(ui.$("#daemon-missing"))).toBe(false);
    expect(b.called("status")).toHaveLength(3);
  });

  test("when the daemon comes back the exit list is read again", async () => {
    const b = new Backend();
    b.reject("status", MISSING);
    b.reject("nodes", MISSING);
    const ui = await start(b);
    expect((ui.$("#country") as HTMLSelectElement).options).toHaveLength(1);
    b.on("nodes", () => [{ id: "x", roles: ["exit"], region: "FI", addr: "203.0.113.7:1", capacity_mbit: 1, price_per_gib: 1, rtt_ms: null, age_s: 1 }]);
    await ui.send({ type: "status", status: status() });
    expect([...(ui.$("#country") as HTMLSelectElement).options].map((o) => o.value)).toEqual(["", "FI"]);
  });

  test("not_permitted: says to join the hopwire group", async () => {
    const ui = await start();
    const message = "The Hopwire service at /run/hopwire/hopwire.sock does not let this user in. Ask an administrator to add you to its group (`sudo usermod -aG hopwire $USER`, then log in again).";
    await ui.send({ type: "down", error: { kind: "not_permitted", message } });
    expect(visible(ui.$("#daemon-missing"))).toBe(true);
    expect(ui.text("#daemon-missing-title")).toBe("The Hopwire service does not let you in");
    expect(ui.text("#daemon-missing-message")).toBe(message);
    expect(ui.text("#daemon-missing-hint")).toContain("Join the hopwire group");
    expect(ui.text("#daemon-missing-hint")).toContain("usermod -aG hopwire");
  });

  test("version: says to update the app or the daemon", async () => {
    const b = new Backend();
    b.reject("settings", { kind: "version", message: "this daemon speaks API version 3, the request version 2" });
    const ui = await start(b);
    await ui.click("#tab-settings");
    (ui.$("#setting-ipv6") as HTMLInputElement).click();
    await new Promise((r) => setTimeout(r, 10));
    expect(visible(ui.$("#daemon-missing"))).toBe(true);
    expect(ui.text("#daemon-missing-title")).toBe("This app and the Hopwire service do not match");
    expect(ui.text("#daemon-missing-message")).toContain("API version 3");
    expect(ui.text("#daemon-missing-hint")).toContain("update the app or the service");
    expect(ui.text("#daemon-missing-note")).toContain("same release");
    expect(visible(ui.$("#settings-error"))).toBe(false);
  });

  test("a connect in progress is not left pending when the daemon goes away", async () => {
    const b = new Backend();
    b.on("connect", () => new Promise(() => {}));
    const ui = await start(b);
    await ui.click("#connect-button");
    expect(ui.text("#state")).toBe("connecting");
    await ui.send({ type: "down", error: MISSING });
    await ui.send({ type: "status", status: status() });
    expect(ui.text("#state")).toBe("disconnected");
  });
});
