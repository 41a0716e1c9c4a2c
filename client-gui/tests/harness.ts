// A fake Rust side for the tests: Tauri's IPC mocked with a scripted
// daemon, `daemon` events emitted through Tauri's own event mock, and
// fixtures in the shapes api.ts declares.

import { clearMocks, mockIPC } from "@tauri-apps/api/mocks";
import { emit } from "@tauri-apps/api/event";
import type {
  ChannelInfo,
  ConnectChoice,
  DaemonEvent,
  GuiError,
  HopInfo,
  NodeInfo,
  Settings,
  Status,
  Update,
  WalletInfo,
} from "../src/api";
import { App } from "../src/app";
import { emptyStatus } from "../src/store";

export const HOPS: HopInfo[] = [
  { id: "a1b2c3d4e5f6", addr: "198.51.100.1:4430", region: "NL" },
  { id: "0badc0ffee00", addr: "198.51.100.2:4430", region: "SE" },
  { id: "feedfacecafe", addr: "198.51.100.3:4430", region: "DE" },
];

export function status(over: Partial<Status> = {}): Status {
  return { ...emptyStatus(), ...over };
}

export function connected(over: Partial<Status> = {}): Status {
  return status({
    state: "connected",
    exit: HOPS[2],
    circuit: HOPS,
    build_ms: 1234.5,
    inner_addr: "10.77.0.2",
    inner_v6: "fd77::2",
    mtu: 1380,
    rtt_ms: 42.5,
    bytes_sent: 2048,
    bytes_received: 5 * 1024 * 1024,
    tx_bps: 64_000,
    rx_bps: 3_200_000,
    payments: [
      { id: HOPS[0].id, price_per_gib: 1_000_000, paid: 1500, bytes: 1_048_576 },
      { id: HOPS[1].id, price_per_gib: 2_000_000, paid: 3000, bytes: 1_048_576 },
      { id: HOPS[2].id, price_per_gib: 3_000_000, paid: 4500, bytes: 1_048_576 },
    ],
    spent: 9000,
    payment_bytes: 640,
    ...over,
  });
}

export function traffic(rx: number, tx: number, over: Partial<Extract<DaemonEvent, { event: "traffic" }>> = {}): Update {
  return {
    type: "event",
    event: {
      event: "traffic",
      bytes_sent: 4096,
      bytes_received: 10 * 1024 * 1024,
      tx_bps: tx,
      rx_bps: rx,
      rtt_ms: 40,
      payments: [
        { id: HOPS[0].id, price_per_gib: 1_000_000, paid: 2000, bytes: 2_097_152 },
        { id: HOPS[1].id, price_per_gib: 2_000_000, paid: 4000, bytes: 2_097_152 },
        { id: HOPS[2].id, price_per_gib: 3_000_000, paid: 6000, bytes: 2_097_152 },
      ],
      spent: 12000,
      ...over,
    },
  };
}

export const NODES: NodeInfo[] = [
  { id: "exit-de-cheap", roles: ["exit", "relay"], region: "DE", addr: "203.0.113.1:4430", capacity_mbit: 100, price_per_gib: 1_000_000, rtt_ms: 80, age_s: 120 },
  { id: "exit-us-dear", roles: ["exit"], region: "US", addr: "203.0.113.2:4430", capacity_mbit: 1000, price_per_gib: 5_000_000, rtt_ms: 20, age_s: 60 },
  { id: "relay-se", roles: ["relay"], region: "SE", addr: "203.0.113.3:4430", capacity_mbit: 500, price_per_gib: 500_000, rtt_ms: null, age_s: 30 },
  { id: "relay-de", roles: ["relay"], region: "DE", addr: "203.0.113.4:4430", capacity_mbit: 200, price_per_gib: 2_500_000, rtt_ms: 10, age_s: 4000 },
  { id: "exit-nl", roles: ["exit"], region: "NL", addr: "203.0.113.5:4430", capacity_mbit: 300, price_per_gib: 3_000_000, rtt_ms: 35, age_s: 10 },
];

export const CHANNELS: ChannelInfo[] = [
  { channel: "chan-open-1", payee: HOPS[0].id, price_per_gib: 1_000_000, deposit: 5_000_000, signed: 1_234_567, bytes: 1_300_000_000, sessions: 4, opened_at: 1_700_000_000, used_at: 1_700_100_000, close_at: null, finalized: false },
  { channel: "chan-closing-2", payee: HOPS[1].id, price_per_gib: 2_000_000, deposit: 3_000_000, signed: 10_000, bytes: 5_000_000, sessions: 1, opened_at: 1_700_000_000, used_at: 1_700_000_500, close_at: 1_700_200_000, finalized: false },
  { channel: "chan-final-3", payee: "oldhop000000", price_per_gib: 900_000, deposit: 1_000_000, signed: 999_000, bytes: 1_000_000_000, sessions: 9, opened_at: 1_690_000_000, used_at: 1_690_500_000, close_at: 1_690_600_000, finalized: true },
];

export function walletInfo(over: Partial<WalletInfo> = {}): WalletInfo {
  return {
    account: "ab".repeat(32),
    ledger: "192.0.2.10:7000",
    balance: 12_345_678,
    ledger_error: null,
    channels: CHANNELS,
    sessions: [{ started_at: 1_700_100_000, ended_at: 1_700_103_600, spent: 9000, hops: { [HOPS[0].id]: 1500, [HOPS[1].id]: 3000, [HOPS[2].id]: 4500 } }],
    ...over,
  };
}

type Handler = (args: Record<string, unknown>) => unknown;

/** A scripted Rust side: each command answers with its handler's value,
 * or rejects when the handler throws (throw a GuiError object). */
export class Backend {
  calls: { cmd: string; args: Record<string, unknown> }[] = [];
  status: Status = status();
  choice: ConnectChoice = { country: null, hops: null, max_price: null };
  settings: Settings = { lockdown: false, allow_lan: false, ipv6: true, dns: [] };
  autostart = false;
  nodes: NodeInfo[] = NODES;
  wallet: WalletInfo = walletInfo();
  handlers: Record<string, Handler> = {};

  constructor() {
    this.handlers = {
      status: () => this.status,
      choice: () => this.choice,
      autostart: () => this.autostart,
      set_autostart: (a) => (this.autostart = a.on as boolean),
      nodes: (a) => this.nodes.filter((n) => !a.role || n.roles.includes(a.role as NodeInfo["roles"][number])),
      wallet: () => this.wallet,
      settings: (a) => {
        this.settings = { ...this.settings, ...(a.change as Partial<Settings>) };
        return this.settings;
      },
      connect: (a) => {
        this.choice = a.choice as ConnectChoice;
        return connected();
      },
      disconnect: () => status(),
    };
  }

  on(cmd: string, h: Handler): this {
    this.handlers[cmd] = h;
    return this;
  }

  /** Makes `cmd` reject with this error. */
  reject(cmd: string, e: GuiError): this {
    return this.on(cmd, () => {
      throw e;
    });
  }

  called(cmd: string) {
    return this.calls.filter((c) => c.cmd === cmd);
  }

  install(): void {
    mockIPC(
      (cmd, payload) => {
        const args = (payload ?? {}) as Record<string, unknown>;
        this.calls.push({ cmd, args });
        const h = this.handlers[cmd];
        if (!h) throw { kind: "internal", message: `no mock for ${cmd}` };
        return h(args);
      },
      { shouldMockEvents: true },
    );
  }
}

/** Lets pending promises (mocked invokes and their continuations) run. */
export async function settle(): Promise<void> {
  for (let i = 0; i < 5; i++) await new Promise((r) => setTimeout(r, 0));
}

export interface Running {
  app: App;
  backend: Backend;
  root: HTMLElement;
  clock: { t: number };
  send(u: Update): Promise<void>;
  $(sel: string): HTMLElement;
  $$(sel: string): HTMLElement[];
  text(sel: string): string;
  click(sel: string): Promise<void>;
}

let running: App | null = null;

/** Starts the app against `backend` in a fresh document body. */
export async function start(backend = new Backend()): Promise<Running> {
  backend.install();
  document.body.replaceChildren();
  const root = document.createElement("div");
  root.id = "app";
  document.body.append(root);
  const clock = { t: 1_000_000 };
  const app = new App(root, { now: () => clock.t });
  running = app;
  app.render();
  await app.start();
  await settle();
  const $ = (sel: string) => {
    const el = root.querySelector<HTMLElement>(sel);
    if (!el) throw new Error(`nothing matches ${sel}`);
    return el;
  };
  return {
    app,
    backend,
    root,
    clock,
    async send(u: Update) {
      await emit("daemon", u);
      await settle();
    },
    $,
    $$: (sel) => [...root.querySelectorAll<HTMLElement>(sel)],
    text: (sel) => ($(sel).textContent ?? "").replace(/\s+/g, " ").trim(),
    async click(sel) {
      $(sel).click();
      await settle();
    },
  };
}

/** Stops the app and Tauri's mocks (call in afterEach). */
export function stop(): void {
  running?.stop();
  running = null;
  clearMocks();
}

export function visible(el: Element): boolean {
  for (let e: Element | null = el; e; e = e.parentElement) {
    if (e.hasAttribute("hidden")) return false;
  }
  return true;
}

export function setValue(el: HTMLElement, value: string, event = "change"): void {
  (el as HTMLInputElement).value = value;
  el.dispatchEvent(new Event(event, { bubbles: true }));
}
