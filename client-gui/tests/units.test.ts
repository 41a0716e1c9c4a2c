import { describe, expect, test } from "vitest";
import { niceCeil } from "../src/chart";
import { bytes, elapsed, isIpAddress, millis, parsePrice, pricePerGib, rate, thousands, units } from "../src/format";
import { apply, channelState, initialModel, shownState } from "../src/store";
import { parseDns } from "../src/screens/settings";
import { viewNodes } from "../src/screens/nodes";
import { CHANNELS, HOPS, NODES, connected, traffic } from "./harness";

describe("format", () => {
  test("amounts with thousands separators, called units", () => {
    expect(thousands(0)).toBe("0");
    expect(thousands(999)).toBe("999");
    expect(thousands(1000)).toBe("1,000");
    expect(thousands(2_000_000)).toBe("2,000,000");
    expect(thousands(-1234567)).toBe("-1,234,567");
    expect(units(1)).toBe("1 unit");
    expect(units(12_345)).toBe("12,345 units");
    expect(pricePerGib(2_000_000)).toBe("2,000,000 units/GiB");
  });

  test("typed prices", () => {
    expect(parsePrice("")).toBeNull();
    expect(parsePrice("  ")).toBeNull();
    expect(parsePrice("2,000,000")).toBe(2_000_000);
    expect(parsePrice("2 000 000")).toBe(2_000_000);
    expect(parsePrice("2M")).toBe(2_000_000);
    expect(parsePrice("1.5k")).toBe(1500);
    expect(parsePrice("1.5")).toBeUndefined();
    expect(parsePrice("-5")).toBeUndefined();
    expect(parsePrice("abc")).toBeUndefined();
    expect(parsePrice("99999999999999999999")).toBeUndefined();
  });

  test("bytes, rates, times", () => {
    expect(bytes(512)).toBe("512 B");
    expect(bytes(1536)).toBe("1.5 KiB");
    expect(bytes(5 * 1024 * 1024)).toBe("5.0 MiB");
    expect(bytes(300 * 1024 ** 3)).toBe("300 GiB");
    expect(rate(0)).toBe("0 bit/s");
    expect(rate(3_200_000)).toBe("3.2 Mbit/s");
    expect(rate(150_000_000)).toBe("150 Mbit/s");
    expect(millis(42.4)).toBe("42 ms");
    expect(millis(1234)).toBe("1.2 s");
    expect(millis(0.4)).toBe("0.4 ms");
    expect(millis(3)).toBe("3 ms");
    expect(elapsed(7.9)).toBe("7 s");
    expect(elapsed(65)).toBe("1 min 05 s");
    expect(elapsed(3 * 3600 + 5 * 60)).toBe("3 h 05 min");
    expect(elapsed(2 * 86400 + 3600)).toBe("2 d 1 h");
  });

  test("IP addresses for DNS", () => {
    expect(isIpAddress("1.1.1.1")).toBe(true);
    expect(isIpAddress("256.1.1.1")).toBe(false);
    expect(isIpAddress("2606:4700::1111")).toBe(true);
    expect(isIpAddress("::1")).toBe(true);
    expect(isIpAddress("1:2:3")).toBe(false);
    expect(isIpAddress("example.org")).toBe(false);
    expect(parseDns("1.1.1.1,  9.9.9.9 ")).toEqual(["1.1.1.1", "9.9.9.9"]);
    expect(parseDns("")).toEqual([]);
    expect(parseDns("x")).toBe("Not an IP address: x");
  });

  test("chart scale", () => {
    expect(niceCeil(0)).toBe(1);
    expect(niceCeil(1000)).toBe(1000);
    expect(niceCeil(1001)).toBe(2000);
    expect(niceCeil(3_200_000)).toBe(5_000_000);
    expect(niceCeil(8_000_000)).toBe(10_000_000);
  });
});

describe("store", () => {
  test("a status replaces everything; events update their parts", () => {
    const m = initialModel();
    apply(m, { type: "status", status: connected() }, 0);
    expect(m.status?.circuit).toEqual(HOPS);
    apply(m, traffic(10, 20), 1000);
    expect(m.status?.rx_bps).toBe(10);
    expect(m.status?.spent).toBe(12000);
    expect(m.samples).toEqual([{ t: 1000, rx: 10, tx: 20, rtt: 40 }]);
    apply(m, { type: "event", event: { event: "state", state: { state: "error", kind: "funds", message: "m" } } }, 2000);
    expect(m.status?.state).toBe("error");
    expect(m.status?.error_kind).toBe("funds");
    expect(m.status?.circuit).toEqual([]);
    apply(m, { type: "down", error: { kind: "daemon_missing", message: "gone" } }, 3000);
    expect(m.down?.message).toBe("gone");
    apply(m, { type: "status", status: connected() }, 4000);
    expect(m.down).toBeNull();
  });

  test("events before any status build on an empty one", () => {
    const m = initialModel();
    apply(m, { type: "event", event: { event: "state", state: { state: "connecting" } } }, 5);
    expect(m.status?.state).toBe("connecting");
    expect(m.since).toBe(5);
  });

  test("a pending connect shows as connecting", () => {
    const m = initialModel();
    m.pendingConnect = true;
    expect(shownState(m)).toBe("connecting");
  });

  test("channel states", () => {
    expect(CHANNELS.map(channelState)).toEqual(["open", "closing", "finalized"]);
  });

  test("node view: roles, countries, sort with unmeasured last both ways", () => {
    const asc = viewNodes(NODES, { role: "", country: "", sort: "rtt", dir: 1 }).map((n) => n.id);
    const desc = viewNodes(NODES, { role: "", country: "", sort: "rtt", dir: -1 }).map((n) => n.id);
    expect(asc[asc.length - 1]).toBe("relay-se");
    expect(desc[desc.length - 1]).toBe("relay-se");
    expect(viewNodes(NODES, { role: "exit", country: "DE", sort: "price", dir: 1 }).map((n) => n.id)).toEqual(["exit-de-cheap"]);
  });
});
