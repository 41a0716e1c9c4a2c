import { afterEach, describe, expect, test } from "vitest";
import { Backend, connected, setValue, start, status, stop, visible } from "./harness";

afterEach(stop);

async function settingsUi(b = new Backend()) {
  const ui = await start(b);
  await ui.click("#tab-settings");
  return ui;
}

const box = (ui: Awaited<ReturnType<typeof start>>, id: string) => ui.$(id) as HTMLInputElement;

describe("settings screen", () => {
  test("shows the settings in force from the status", async () => {
    const b = new Backend();
    b.status = status({ settings: { lockdown: true, allow_lan: false, ipv6: false, dns: ["9.9.9.9", "2620:fe::fe"] } });
    const ui = await settingsUi(b);
    expect(box(ui, "#setting-lockdown").checked).toBe(true);
    expect(box(ui, "#setting-allow-lan").checked).toBe(false);
    expect(box(ui, "#setting-ipv6").checked).toBe(false);
    expect(box(ui, "#setting-dns").value).toBe("9.9.9.9, 2620:fe::fe");
    expect(ui.text("#settings-summary")).toBe("lockdown on · local network blocked · IPv6 blocked · DNS: 9.9.9.9, 2620:fe::fe");
  });

  for (const [id, key] of [
    ["#setting-lockdown", "lockdown"],
    ["#setting-allow-lan", "allow_lan"],
    ["#setting-ipv6", "ipv6"],
  ] as const) {
    test(`${id} invokes settings with that one change and shows the answer`, async () => {
      const b = new Backend();
      const ui = await settingsUi(b);
      const input = box(ui, id);
      const want = !input.checked;
      input.click();
      await new Promise((r) => setTimeout(r, 10));
      expect(b.called("settings").map((c) => c.args)).toEqual([{ change: { [key]: want } }]);
      expect(input.checked).toBe(want);
      expect(ui.$("#settings-summary").getAttribute(`data-${key.replace("_", "-")}`)).toBe(String(want));
    });
  }

  test("the answered settings win over the click", async () => {
    const b = new Backend();
    // The daemon keeps lockdown off (say, a policy) whatever is asked.
    b.on("settings", () => ({ lockdown: false, allow_lan: true, ipv6: true, dns: [] }));
    const ui = await settingsUi(b);
    box(ui, "#setting-lockdown").click();
    await new Promise((r) => setTimeout(r, 10));
    expect(box(ui, "#setting-lockdown").checked).toBe(false);
    expect(box(ui, "#setting-allow-lan").checked).toBe(true);
    expect(ui.text("#settings-summary")).toContain("local network allowed");
  });

  test("a refused change shows the error and puts the toggle back", async () => {
    const b = new Backend();
    b.reject("settings", { kind: "platform", message: "firewall rules could not be written" });
    const ui = await settingsUi(b);
    box(ui, "#setting-lockdown").click();
    await new Promise((r) => setTimeout(r, 10));
    expect(visible(ui.$("#settings-error"))).toBe(true);
    expect(ui.text("#settings-error")).toContain("firewall rules could not be written");
    expect(box(ui, "#setting-lockdown").checked).toBe(false);
  });

  test("DNS servers: comma separated, sent as a list", async () => {
    const b = new Backend();
    const ui = await settingsUi(b);
    setValue(ui.$("#setting-dns"), "1.1.1.1, 2606:4700:4700::1111", "input");
    await ui.click("#setting-dns-save");
    expect(b.called("settings").map((c) => c.args)).toEqual([{ change: { dns: ["1.1.1.1", "2606:4700:4700::1111"] } }]);
    expect(ui.text("#settings-summary")).toContain("DNS: 1.1.1.1, 2606:4700:4700::1111");
  });

  test("DNS empty means the exit's resolver", async () => {
    const b = new Backend();
    b.settings = { lockdown: false, allow_lan: false, ipv6: true, dns: ["9.9.9.9"] };
    b.status = status({ settings: b.settings });
    const ui = await settingsUi(b);
    setValue(ui.$("#setting-dns"), "  ", "input");
    await ui.click("#setting-dns-save");
    expect(b.called("settings")[0].args).toEqual({ change: { dns: [] } });
    expect(ui.text("#settings-summary")).toContain("DNS: the exit's resolver");
  });

  test("DNS that is not an address is refused before sending", async () => {
    const b = new Backend();
    const ui = await settingsUi(b);
    setValue(ui.$("#setting-dns"), "1.1.1.1, dns.example", "input");
    await ui.click("#setting-dns-save");
    expect(b.called("settings")).toHaveLength(0);
    expect(ui.text("#settings-error")).toBe("Not an IP address: dns.example");
  });

  test("autostart reads and sets the app's autostart", async () => {
    const b = new Backend();
    b.autostart = true;
    const ui = await settingsUi(b);
    expect(box(ui, "#setting-autostart").checked).toBe(true);
    box(ui, "#setting-autostart").click();
    await new Promise((r) => setTimeout(r, 10));
    expect(b.called("set_autostart").map((c) => c.args)).toEqual([{ on: false }]);
    expect(box(ui, "#setting-autostart").checked).toBe(false);
  });

  test("autostart failing says why", async () => {
    const b = new Backend();
    b.reject("set_autostart", { kind: "internal", message: "/home/u/.config/autostart: read-only" });
    const ui = await settingsUi(b);
    box(ui, "#setting-autostart").click();
    await new Promise((r) => setTimeout(r, 10));
    expect(ui.text("#settings-error")).toContain("read-only");
    expect(box(ui, "#setting-autostart").checked).toBe(false);
  });
});

describe("fail closed", () => {
  test("a red banner on every tab while the status says fail_closed", async () => {
    const b = new Backend();
    b.status = connected({ fail_closed: "settings.json is unreadable" });
    const ui = await start(b);
    for (const tab of ["connect", "circuit", "money", "nodes", "settings"]) {
      await ui.click(`#tab-${tab}`);
      expect(visible(ui.$("#fail-closed"))).toBe(true);
    }
    expect(ui.text("#fail-closed")).toContain("Everything but the tunnel is blocked");
    expect(ui.text("#fail-closed-reason")).toBe("settings.json is unreadable");
  });

  test("the banner goes when a status without it arrives", async () => {
    const b = new Backend();
    b.status = status({ fail_closed: "network state file corrupt" });
    const ui = await start(b);
    expect(visible(ui.$("#fail-closed"))).toBe(true);
    await ui.send({ type: "status", status: status() });
    expect(visible(ui.$("#fail-closed"))).toBe(false);
  });

  test("a settings event from another client shows the banner and the new settings", async () => {
    const ui = await start();
    expect(visible(ui.$("#fail-closed"))).toBe(false);
    await ui.send({
      type: "event",
      event: {
        event: "settings",
        settings: { lockdown: true, allow_lan: false, ipv6: true, dns: [] },
        fail_closed: "settings.json is unreadable",
      },
    });
    expect(visible(ui.$("#fail-closed"))).toBe(true);
    expect(ui.text("#fail-closed-reason")).toBe("settings.json is unreadable");
    await ui.send({
      type: "event",
      event: { event: "settings", settings: { lockdown: false, allow_lan: false, ipv6: true, dns: [] }, fail_closed: null },
    });
    expect(visible(ui.$("#fail-closed"))).toBe(false);
  });

  test("no banner normally", async () => {
    const ui = await start();
    expect(visible(ui.$("#fail-closed"))).toBe(false);
  });
});
