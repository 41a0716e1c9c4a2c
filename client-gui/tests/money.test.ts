import { afterEach, describe, expect, test } from "vitest";
import { Backend, CHANNELS, HOPS, connected, start, stop, traffic, visible, walletInfo } from "./harness";

afterEach(stop);

describe("money screen", () => {
  test("payments per hop of this session", async () => {
    const b = new Backend();
    b.status = connected();
    const ui = await start(b);
    await ui.click("#tab-money");
    const rows = ui.$$("#payments .payment");
    expect(rows.map((r) => r.getAttribute("data-id"))).toEqual(HOPS.map((h) => h.id));
    expect(rows.map((r) => r.getAttribute("data-paid"))).toEqual(["1500", "3000", "4500"]);
    expect(rows[1].textContent).toContain("SE");
    expect(rows[1].textContent).toContain("2,000,000 units/GiB");
    expect(rows[1].textContent).toContain("3,000 units");
    expect(rows[1].textContent).toContain("1.0 MiB");
    expect(ui.text("#spent")).toBe("9,000 units");
    expect(visible(ui.$("#payments-empty"))).toBe(false);
  });

  test("traffic events update what each hop was paid", async () => {
    const b = new Backend();
    b.status = connected();
    const ui = await start(b);
    await ui.click("#tab-money");
    await ui.send(traffic(1, 1));
    expect(ui.$$("#payments .payment").map((r) => r.getAttribute("data-paid"))).toEqual(["2000", "4000", "6000"]);
    expect(ui.text("#spent")).toBe("12,000 units");
  });

  test("nothing paid yet", async () => {
    const ui = await start();
    await ui.click("#tab-money");
    expect(ui.$$("#payments .payment")).toHaveLength(0);
    expect(visible(ui.$("#payments-empty"))).toBe(true);
    expect(ui.text("#spent")).toBe("0 units");
  });

  test("the wallet: balance, account, channels and their states", async () => {
    const b = new Backend();
    const ui = await start(b);
    await ui.click("#tab-money");
    expect(b.called("wallet")[0].args).toEqual({ close: false });
    expect(ui.text("#balance")).toBe("12,345,678 units");
    expect(ui.text("#wallet-account")).toBe("ab".repeat(32));
    expect(ui.text("#wallet-ledger")).toBe("192.0.2.10:7000");
    const rows = ui.$$("#wallet .channel");
    expect(rows.map((r) => r.getAttribute("data-id"))).toEqual(CHANNELS.map((c) => c.channel));
    expect(rows.map((r) => r.getAttribute("data-state"))).toEqual(["open", "closing", "finalized"]);
    expect(rows[0].textContent).toContain("5,000,000 units"); // deposit
    expect(rows[0].textContent).toContain("1,234,567 units"); // spent = signed
    expect(rows[0].textContent).toContain("1,000,000 units/GiB");
    expect(rows[0].textContent).toContain("1.2 GiB");
    expect(rows[1].querySelector(".state")!.textContent).toMatch(/^closing \(takes effect \d{4}-\d\d-\d\d \d\d:\d\d\)$/);
    expect(ui.$$("#sessions .session")).toHaveLength(1);
    expect(ui.text("#sessions")).toContain("9,000 units to 3 hops");
  });

  test("the ledger's error instead of a balance", async () => {
    const b = new Backend();
    b.wallet = walletInfo({ balance: null, ledger_error: "connection refused" });
    const ui = await start(b);
    await ui.click("#tab-money");
    expect(ui.text("#balance")).toBe("unknown: connection refused");
    expect(ui.$("#balance").classList.contains("bad")).toBe(true);
  });

  test("close unused channels invokes wallet with close=true and shows the answer", async () => {
    const b = new Backend();
    const ui = await start(b);
    await ui.click("#tab-money");
    b.wallet = walletInfo({ channels: CHANNELS.map((c) => (c.channel === "chan-open-1" ? { ...c, close_at: 1_700_300_000 } : c)) });
    expect((ui.$("#close-channels") as HTMLButtonElement).disabled).toBe(false);
    await ui.click("#close-channels");
    expect(b.called("wallet").map((c) => c.args)).toEqual([{ close: false }, { close: true }]);
    expect(ui.$$("#wallet .channel").map((r) => r.getAttribute("data-state"))).toEqual(["closing", "closing", "finalized"]);
    expect(ui.text("#wallet-note")).toContain("2 channels are closing");
    // Nothing open is left to close.
    expect((ui.$("#close-channels") as HTMLButtonElement).disabled).toBe(true);
  });

  test("a wallet event updates the channels", async () => {
    const b = new Backend();
    const ui = await start(b);
    await ui.click("#tab-money");
    await ui.send({ type: "event", event: { event: "wallet", channels: [{ ...CHANNELS[0], finalized: true, close_at: 1 }] } });
    const rows = ui.$$("#wallet .channel");
    expect(rows).toHaveLength(1);
    expect(rows[0].getAttribute("data-state")).toBe("finalized");
    expect(ui.text("#balance")).toBe("12,345,678 units");
  });

  test("a wallet the daemon cannot read shows its error", async () => {
    const b = new Backend();
    b.reject("wallet", { kind: "config", message: "no ledger configured" });
    const ui = await start(b);
    await ui.click("#tab-money");
    expect(visible(ui.$("#wallet-error"))).toBe(true);
    expect(ui.text("#wallet-error")).toContain("no ledger configured");
    expect(visible(ui.$("#daemon-missing"))).toBe(false);
  });

  test("opening the tab again reads the wallet again", async () => {
    const b = new Backend();
    const ui = await start(b);
    await ui.click("#tab-money");
    b.wallet = walletInfo({ balance: 42 });
    await ui.click("#tab-nodes");
    await ui.click("#tab-money");
    expect(b.called("wallet")).toHaveLength(2);
    expect(ui.text("#balance")).toBe("42 units");
  });
});
