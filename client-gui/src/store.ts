// The front end's one state object and how the daemon's updates change it.
// Nothing here touches the DOM or the daemon: `apply` is a plain function
// of (model, update, now), so it is tested on its own.

import type {
  ChannelInfo,
  ConnectChoice,
  DaemonEvent,
  GuiError,
  NodeInfo,
  Settings,
  Status,
  TunnelState,
  Update,
  WalletInfo,
} from "./api";

/** One second of traffic, as a `traffic` event reported it. */
export interface Sample {
  /** When it arrived (ms, the front end's clock). */
  t: number;
  rx: number;
  tx: number;
  rtt: number | null;
}

/** Samples kept for the chart: one a second over the last minute. */
export const CHART_SAMPLES = 60;

export interface Model {
  /** The daemon's status; null until the first one arrives. */
  status: Status | null;
  /** Why the daemon cannot be reached (the full-screen notice), or null. */
  down: GuiError | null;
  /** Since when (ms) the shown state has been connecting/reconnecting. */
  since: number | null;
  /** Throughput and round trip over the last minute, oldest first. */
  samples: Sample[];
  /** The connect screen's choice, as loaded or edited. */
  choice: ConnectChoice;
  /** A connect the user asked for that has not answered yet. */
  pendingConnect: boolean;
  /** The last rejected command (cleared by the next one). */
  commandError: (GuiError & { action: string }) | null;
  wallet: WalletInfo | null;
  walletError: GuiError | null;
  /** The DHT's node list (Nodes tab), and the exits (country choice). */
  nodes: NodeInfo[] | null;
  nodesError: GuiError | null;
  exits: NodeInfo[] | null;
  autostart: boolean | null;
}

export function initialModel(): Model {
  return {
    status: null,
    down: null,
    since: null,
    samples: [],
    choice: { country: null, hops: null, max_price: null },
    pendingConnect: false,
    commandError: null,
    wallet: null,
    walletError: null,
    nodes: null,
    nodesError: null,
    exits: null,
    autostart: null,
  };
}

export const DEFAULT_SETTINGS: Settings = { lockdown: false, allow_lan: false, ipv6: true, dns: [] };

/** A status with nothing known yet (before the first one arrives). */
export function emptyStatus(): Status {
  return {
    state: "disconnected",
    error: null,
    error_kind: null,
    attempt: null,
    exit: null,
    circuit: [],
    build_ms: null,
    inner_addr: null,
    inner_v6: null,
    ipv6_blocked: null,
    bytes_sent: 0,
    bytes_received: 0,
    tx_bps: 0,
    rx_bps: 0,
    mtu: null,
    rtt_ms: null,
    payments: [],
    spent: 0,
    payment_bytes: 0,
    settings: { ...DEFAULT_SETTINGS },
    fail_closed: null,
  };
}

/** The state the screens show: the daemon's, or connecting while a
 * connect the user asked for has not reached the daemon's state yet. */
export function shownState(m: Model): Status["state"] {
  const state = m.status?.state ?? "disconnected";
  if (m.pendingConnect && (state === "disconnected" || state === "error")) return "connecting";
  return state;
}

const BUSY = new Set(["connecting", "reconnecting"]);

/** Keeps `since` in step with the shown state: set when it turns
 * connecting or reconnecting, cleared when it leaves both. */
export function track(m: Model, before: Status["state"], now: number): void {
  const after = shownState(m);
  if (!BUSY.has(after)) {
    m.since = null;
  } else if (after !== before || m.since === null) {
    m.since = now;
  }
}

/** A whole status replaces the one held. */
export function applyStatus(m: Model, status: Status, now: number): void {
  const before = shownState(m);
  const wasState = m.status?.state;
  m.status = status;
  m.down = null;
  if (status.state === "connecting" && wasState !== "connecting") m.samples = [];
  track(m, before, now);
}

function applyTunnelState(s: Status, t: TunnelState): void {
  s.state = t.state;
  s.error = null;
  s.error_kind = null;
  s.attempt = null;
  switch (t.state) {
    case "reconnecting":
      s.error = t.reason;
      s.attempt = t.attempt;
      s.rx_bps = 0;
      s.tx_bps = 0;
      break;
    case "error":
      s.error = t.message;
      s.error_kind = t.kind;
      clearCircuit(s);
      break;
    case "disconnected":
      clearCircuit(s);
      break;
    case "connecting":
      // A new session: its counters start again.
      clearCircuit(s);
      s.bytes_sent = 0;
      s.bytes_received = 0;
      s.payments = [];
      s.spent = 0;
      s.payment_bytes = 0;
      break;
    case "connected":
      break;
  }
}

function clearCircuit(s: Status): void {
  s.circuit = [];
  s.exit = null;
  s.build_ms = null;
  s.inner_addr = null;
  s.inner_v6 = null;
  s.mtu = null;
  s.rx_bps = 0;
  s.tx_bps = 0;
  s.rtt_ms = null;
}

/** One event of the daemon's stream updates its part of the status. */
export function applyEvent(m: Model, e: DaemonEvent, now: number): void {
  const before = shownState(m);
  const s = m.status ?? (m.status = emptyStatus());
  switch (e.event) {
    case "state":
      if (e.state.state === "connecting" && s.state !== "connecting") m.samples = [];
      applyTunnelState(s, e.state);
      break;
    case "circuit":
      s.circuit = e.circuit;
      s.exit = e.circuit.length > 0 ? e.circuit[e.circuit.length - 1] : null;
      s.build_ms = e.build_ms;
      s.inner_addr = e.inner_addr;
      s.inner_v6 = e.inner_v6;
      s.ipv6_blocked = e.ipv6_blocked ?? null;
      s.mtu = e.mtu;
      break;
    case "settings":
      s.settings = e.settings;
      s.fail_closed = e.fail_closed;
      break;
    case "traffic":
      s.bytes_sent = e.bytes_sent;
      s.bytes_received = e.bytes_received;
      s.tx_bps = e.tx_bps;
      s.rx_bps = e.rx_bps;
      s.rtt_ms = e.rtt_ms;
      s.payments = e.payments;
      s.spent = e.spent;
      m.samples.push({ t: now, rx: e.rx_bps, tx: e.tx_bps, rtt: e.rtt_ms });
      if (m.samples.length > CHART_SAMPLES) m.samples.splice(0, m.samples.length - CHART_SAMPLES);
      break;
    case "wallet":
      applyChannels(m, e.channels);
      break;
    case "lagged":
      // The Rust side resubscribes and sends a fresh status.
      break;
  }
  track(m, before, now);
}

export function applyChannels(m: Model, channels: ChannelInfo[]): void {
  if (m.wallet) m.wallet = { ...m.wallet, channels };
}

/** Everything the Rust side sends as the `daemon` event. */
export function apply(m: Model, u: Update, now: number): void {
  switch (u.type) {
    case "status":
      applyStatus(m, u.status, now);
      break;
    case "event":
      applyEvent(m, u.event, now);
      break;
    case "down":
      m.down = u.error;
      m.pendingConnect = false;
      break;
  }
}

/** Error kinds that mean the daemon cannot be used at all from here:
 * shown full screen instead of next to the control that failed. */
export const OUTAGE_KINDS = new Set(["daemon_missing", "not_permitted", "version"]);

/** A channel's state as the wallet shows it. */
export function channelState(c: ChannelInfo): "open" | "closing" | "finalized" {
  if (c.finalized) return "finalized";
  if (c.close_at !== null) return "closing";
  return "open";
}
