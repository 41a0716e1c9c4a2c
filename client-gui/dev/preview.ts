// A preview of the window in a plain browser, with the Rust side mocked:
// `npm run dev`, then open /dev/preview.html?state=connected&tab=circuit
// (state: disconnected | connecting | connected | reconnecting | error |
// down | fail_closed). Not part of the build; for looking at the screens.

import { emit } from "@tauri-apps/api/event";
import { mockIPC } from "@tauri-apps/api/mocks";
import type { Status, Update } from "../src/api";
import { startApp } from "../src/app";
import "../src/style.css";
import { emptyStatus } from "../src/store";
import type { Tab } from "../src/ctx";

const q = new URLSearchParams(location.search);
const want = q.get("state") ?? "connected";
const hops = [
  { id: "a1b2c3d4e5f6", addr: "198.51.100.1:4430", region: "NL" },
  { id: "0badc0ffee00", addr: "198.51.100.2:4430", region: "SE" },
  { id: "feedfacecafe", addr: "198.51.100.3:4430", region: "DE" },
];
const payments = hops.map((h, i) => ({ id: h.id, price_per_gib: (i + 1) * 1_000_000, paid: (i + 1) * 1500, bytes: 734_003_200 }));
const base = emptyStatus();
const statuses: Record<string, Status> = {
  disconnected: base,
  connecting: { ...base, state: "connecting" },
  connected: {
    ...base,
    state: "connected",
    circuit: hops,
    exit: hops[2],
    build_ms: 1234,
    inner_addr: "10.77.0.2",
    inner_v6: null,
    ipv6_blocked: "the exit carries no IPv6",
    mtu: 1380,
    rtt_ms: 48,
    bytes_received: 734_003_200,
    bytes_sent: 12_582_912,
    payments,
    spent: 9000,
    payment_bytes: 6400,
  },
  reconnecting: { ...base, state: "reconnecting", error: "the middle hop stopped answering", attempt: 2, circuit: hops },
  error: { ...base, state: "error", error: "balance 1,200 units does not cover a deposit of 3,000,000 units", error_kind: "funds" },
};
statuses.fail_closed = { ...statuses.connected, fail_closed: "/var/lib/hopwire/settings.json is unreadable (permission denied)" };
const status = statuses[want] ?? statuses.connected;

mockIPC(
  (cmd) => {
    switch (cmd) {
      case "status":
        if (want === "down") throw { kind: "daemon_missing", message: "The Hopwire service is not running (nothing answers at /run/hopwire/hopwire.sock). Start it: `sudo systemctl start hopwire`, or `sudo hopwire daemon`." };
        return status;
      case "choice":
        return { country: "DE", hops: 3, max_price: 3_000_000 };
      case "autostart":
        return true;
      case "nodes":
        return [
          { id: "exit-de-7f3a91c2", roles: ["exit", "relay"], region: "DE", addr: "203.0.113.1:4430", capacity_mbit: 100, price_per_gib: 1_000_000, rtt_ms: 80, age_s: 120 },
          { id: "exit-us-44b0e1aa", roles: ["exit"], region: "US", addr: "203.0.113.2:4430", capacity_mbit: 1000, price_per_gib: 5_000_000, rtt_ms: 120, age_s: 60 },
          { id: "relay-se-91aa00cd", roles: ["relay"], region: "SE", addr: "203.0.113.3:4430", capacity_mbit: 500, price_per_gib: 500_000, rtt_ms: null, age_s: 30 },
          { id: "exit-nl-0e0e0e0e", roles: ["exit"], region: "NL", addr: "203.0.113.5:4430", capacity_mbit: 300, price_per_gib: 3_000_000, rtt_ms: 35, age_s: 7200 },
        ];
      case "wallet":
        return {
          account: "3f9a".repeat(16),
          ledger: "192.0.2.10:7000",
          balance: 48_250_000,
          ledger_error: null,
          channels: hops.map((h, i) => ({ channel: `ch${i}`, payee: h.id, price_per_gib: (i + 1) * 1_000_000, deposit: 5_000_000, signed: (i + 1) * 1500, bytes: 734_003_200, sessions: 3, opened_at: 1_700_000_000, used_at: 1_700_050_000, close_at: i === 1 ? 1_700_300_000 : null, finalized: false })),
          sessions: [{ started_at: 1_700_000_000, ended_at: 1_700_003_600, spent: 9000, hops: {} }],
        };
      case "settings":
        return status.settings;
      default:
        return null;
    }
  },
  { shouldMockEvents: true },
);

const root = document.getElementById("app")!;
startApp(root).then(async (app) => {
  app.select((q.get("tab") ?? "connect") as Tab);
  if (want === "connected" || want === "fail_closed") {
    for (let i = 0; i < 60; i++) {
      const rx = 4_000_000 + 3_000_000 * Math.sin(i / 6) + (i % 7) * 300_000;
      const u: Update = {
        type: "event",
        event: { event: "traffic", bytes_sent: 12_582_912, bytes_received: 734_003_200, tx_bps: rx / 12, rx_bps: Math.round(rx), rtt_ms: 45 + (i % 9), payments, spent: 9000 },
      };
      await emit("daemon", u);
    }
  }
});
