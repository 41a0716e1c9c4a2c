import { afterEach, describe, expect, test } from "vitest";
import { Backend, HOPS, connected, start, status, stop, traffic, visible } from "./harness";

afterEach(stop);

async function connectedUi(over = {}) {
  const b = new Backend();
  b.status = connected(over);
  const ui = await start(b);
  await ui.click("#tab-circuit");
  return ui;
}

describe("circuit screen", () => {
  test("disconnected: no hops, says to connect", async () => {
    const ui = await start();
    await ui.click("#tab-circuit");
    expect(visible(ui.$("#screen-circuit"))).toBe(true);
    expect(visible(ui.$("#screen-connect"))).toBe(false);
    expect(ui.$$("#circuit-path .hop")).toHaveLength(0);
    expect(ui.text("#circuit-empty")).toBe("No circuit: connect first.");
    expect(ui.text("#inner-addr")).toBe("—");
    expect(ui.$("#throughput-chart").getAttribute("data-points")).toBe("0");
  });

  test("connecting: says the circuit is being built", async () => {
    const b = new Backend();
    b.status = status({ state: "connecting" });
    const ui = await start(b);
    await ui.click("#tab-circuit");
    expect(ui.text("#circuit-empty")).toBe("Building the circuit…");
  });

  test("connected: the path with 3 hops in order, client to internet", async () => {
    const ui = await connectedUi();
    const hops = ui.$$("#circuit-path .hop");
    expect(hops.map((h) => h.getAttribute("data-id"))).toEqual(HOPS.map((h) => h.id));
    expect(hops.map((h) => h.getAttribute("data-role"))).toEqual(["guard", "middle", "exit"]);
    expect(hops.map((h) => h.querySelector(".hop-region")!.textContent)).toEqual(["NL", "SE", "DE"]);
    expect(hops[0].textContent).toContain("a1b2c3d4e5f6");
    const all = ui.$$("#circuit-path > li:not(.arrow)").map((li) => li.textContent);
    expect(all[0]).toBe("This computer");
    expect(all[all.length - 1]).toBe("Internet");
    expect(ui.$("#circuit-path").getAttribute("data-hops")).toBe("3");
    expect(visible(ui.$("#circuit-empty"))).toBe(false);
  });

  test("connected: build time, addresses, round trip, bytes this session", async () => {
    const ui = await connectedUi();
    expect(ui.text("#build-time")).toBe("1.2 s");
    expect(ui.text("#inner-addr")).toBe("10.77.0.2");
    expect(ui.text("#inner-v6")).toBe("fd77::2");
    expect(ui.text("#rtt")).toBe("43 ms");
    expect(ui.text("#mtu")).toBe("1380");
    expect(ui.text("#session-bytes")).toBe("↓ 5.0 MiB · ↑ 2.0 KiB");
    expect(ui.text("#rx-now")).toBe("3.2 Mbit/s");
    expect(ui.text("#tx-now")).toBe("64.0 kbit/s");
  });

  test("IPv6 blocked shows why", async () => {
    const ui = await connectedUi({ inner_v6: null, ipv6_blocked: "the exit does not carry IPv6: blocked" });
    expect(ui.text("#inner-v6")).toBe("the exit does not carry IPv6: blocked");
  });

  test("a one-hop circuit's only hop is the exit", async () => {
    const ui = await connectedUi({ circuit: [HOPS[2]] });
    const hops = ui.$$("#circuit-path .hop");
    expect(hops).toHaveLength(1);
    expect(hops[0].getAttribute("data-role")).toBe("exit");
  });

  test("the chart follows traffic events", async () => {
    const ui = await connectedUi();
    const chart = ui.$("#throughput-chart");
    await ui.send(traffic(1_000_000, 50_000));
    expect(chart.getAttribute("data-points")).toBe("1");
    expect(chart.getAttribute("data-last-rx")).toBe("1000000");
    await ui.send(traffic(8_000_000, 120_000, { rtt_ms: 55 }));
    expect(chart.getAttribute("data-points")).toBe("2");
    expect(chart.getAttribute("data-last-rx")).toBe("8000000");
    expect(chart.getAttribute("data-last-tx")).toBe("120000");
    expect(chart.getAttribute("data-max")).toBe("10000000");
    expect(ui.text("#chart-max")).toBe("scale: 10.0 Mbit/s");
    expect(chart.querySelectorAll("polyline.rx-line")).toHaveLength(1);
    expect(chart.querySelector("polyline.rx-line")!.getAttribute("points")!.split(" ")).toHaveLength(2);
    expect(ui.$("#rtt-chart").getAttribute("data-last-rtt")).toBe("55");
    // The readouts follow too.
    expect(ui.text("#rx-now")).toBe("8.0 Mbit/s");
    expect(ui.text("#rtt")).toBe("55 ms");
    expect(ui.text("#session-bytes")).toBe("↓ 10.0 MiB · ↑ 4.0 KiB");
  });

  test("the chart keeps the last minute only", async () => {
    const ui = await connectedUi();
    for (let i = 1; i <= 65; i++) {
      ui.app.onUpdate(traffic(i * 1000, 0));
    }
    const chart = ui.$("#throughput-chart");
    expect(chart.getAttribute("data-points")).toBe("60");
    expect(chart.getAttribute("data-last-rx")).toBe("65000");
    const first = chart.querySelector("polyline.rx-line")!.getAttribute("points")!.split(" ")[0];
    expect(first.startsWith("0.0,")).toBe(true);
  });

  test("unmeasured round trips break the round-trip line", async () => {
    const ui = await connectedUi();
    ui.app.onUpdate(traffic(1, 1, { rtt_ms: 30 }));
    ui.app.onUpdate(traffic(1, 1, { rtt_ms: 31 }));
    ui.app.onUpdate(traffic(1, 1, { rtt_ms: null }));
    ui.app.onUpdate(traffic(1, 1, { rtt_ms: 32 }));
    ui.app.onUpdate(traffic(1, 1, { rtt_ms: 33 }));
    const rtt = ui.$("#rtt-chart");
    expect(rtt.getAttribute("data-points")).toBe("4");
    expect(rtt.querySelectorAll("polyline.rtt-line")).toHaveLength(2);
    expect(ui.text("#rtt")).toBe("33 ms");
  });

  test("a new circuit event replaces the path", async () => {
    const ui = await connectedUi();
    const other = [{ id: "111111111111", addr: "198.51.100.9:1", region: "FR" }, HOPS[2]];
    await ui.send({ type: "event", event: { event: "circuit", circuit: other, build_ms: 250, inner_addr: "10.77.0.3", inner_v6: null, ipv6_blocked: "the exit does not carry IPv6: blocked", mtu: 1300 } });
    expect(ui.$$("#circuit-path .hop").map((h) => h.getAttribute("data-id"))).toEqual(["111111111111", HOPS[2].id]);
    expect(ui.text("#build-time")).toBe("250 ms");
    expect(ui.text("#inner-addr")).toBe("10.77.0.3");
    expect(ui.text("#mtu")).toBe("1300");
    expect(ui.text("#inner-v6")).toBe("the exit does not carry IPv6: blocked");
  });

  test("reconnecting: the lost path is marked and the attempt shown", async () => {
    const ui = await connectedUi();
    await ui.send({ type: "event", event: { event: "state", state: { state: "reconnecting", reason: "middle vanished", attempt: 3 } } });
    expect(ui.$("#circuit-path").classList.contains("stale")).toBe(true);
    expect(ui.text("#circuit-empty")).toContain("attempt 3");
    expect(ui.text("#circuit-empty")).toContain("middle vanished");
  });

  test("a new connect starts the chart afresh", async () => {
    const ui = await connectedUi();
    await ui.send(traffic(5, 5));
    await ui.send({ type: "event", event: { event: "state", state: { state: "disconnected" } } });
    expect(ui.$$("#circuit-path .hop")).toHaveLength(0);
    await ui.send({ type: "event", event: { event: "state", state: { state: "connecting" } } });
    expect(ui.$("#throughput-chart").getAttribute("data-points")).toBe("0");
  });
});
