// The app's contract with its Rust side (client-gui/src-tauri/src/app.rs):
// the commands a screen may invoke, the `daemon` event stream, and the
// shapes of the daemon's API (core/api/src/lib.rs) as they arrive in JSON.
// Screens use only this module to reach the daemon.

import { invoke } from "@tauri-apps/api/core";
import { listen, type UnlistenFn } from "@tauri-apps/api/event";

export type State = "disconnected" | "connecting" | "connected" | "reconnecting" | "error";

/** A daemon error kind, or the app's own: daemon_missing, not_permitted, version. */
export type ErrorKind =
  | "no_exit"
  | "hop_unreachable"
  | "exit_refused"
  | "funds"
  | "ledger_unreachable"
  | "config"
  | "platform"
  | "not_permitted"
  | "bad_input"
  | "version"
  | "internal"
  | "daemon_missing";

export interface GuiError {
  kind: ErrorKind | string;
  message: string;
}

export interface HopInfo {
  id: string;
  addr: string;
  region: string;
}

export interface HopPayment {
  id: string;
  price_per_gib: number;
  paid: number;
  bytes: number;
}

export interface Settings {
  lockdown: boolean;
  allow_lan: boolean;
  ipv6: boolean;
  dns: string[];
}

export interface SettingsChange {
  lockdown?: boolean;
  allow_lan?: boolean;
  ipv6?: boolean;
  dns?: string[];
}

export interface Status {
  state: State;
  error: string | null;
  error_kind: ErrorKind | null;
  attempt: number | null;
  exit: HopInfo | null;
  circuit: HopInfo[];
  build_ms: number | null;
  inner_addr: string | null;
  inner_v6: string | null;
  ipv6_blocked: string | null;
  bytes_sent: number;
  bytes_received: number;
  tx_bps: number;
  rx_bps: number;
  mtu: number | null;
  rtt_ms: number | null;
  payments: HopPayment[];
  spent: number;
  payment_bytes: number;
  settings: Settings;
  fail_closed: string | null;
}

export type TunnelState =
  | { state: "disconnected" }
  | { state: "connecting" }
  | { state: "connected" }
  | { state: "reconnecting"; reason: string; attempt: number }
  | { state: "error"; kind: ErrorKind; message: string };

export interface ChannelInfo {
  channel: string;
  payee: string;
  price_per_gib: number;
  deposit: number;
  signed: number;
  bytes: number;
  sessions: number;
  opened_at: number;
  used_at: number;
  close_at: number | null;
  finalized: boolean;
}

export type DaemonEvent =
  | { event: "state"; state: TunnelState }
  | {
      event: "circuit";
      circuit: HopInfo[];
      build_ms: number;
      inner_addr: string;
      inner_v6: string | null;
      ipv6_blocked: string | null;
      mtu: number;
    }
  | {
      event: "traffic";
      bytes_sent: number;
      bytes_received: number;
      tx_bps: number;
      rx_bps: number;
      rtt_ms: number | null;
      payments: HopPayment[];
      spent: number;
    }
  | { event: "wallet"; channels: ChannelInfo[] }
  | { event: "settings"; settings: Settings; fail_closed: string | null }
  | { event: "lagged"; missed: number };

/** What the Rust side emits as the `daemon` event. */
export type Update =
  | { type: "status"; status: Status }
  | { type: "event"; event: DaemonEvent }
  | { type: "down"; error: GuiError };

export type Role = "exit" | "relay" | "bootstrap";

export interface NodeInfo {
  id: string;
  roles: Role[];
  region: string;
  addr: string;
  capacity_mbit: number;
  price_per_gib: number;
  rtt_ms: number | null;
  age_s: number;
}

export interface SessionInfo {
  started_at: number;
  ended_at: number;
  spent: number;
  hops: Record<string, number>;
}

export interface WalletInfo {
  account: string;
  ledger: string;
  balance: number | null;
  ledger_error: string | null;
  channels: ChannelInfo[];
  sessions: SessionInfo[];
}

export interface ConnectChoice {
  country: string | null;
  hops: number | null;
  max_price: number | null;
}

export const status = () => invoke<Status>("status");
export const connect = (choice: ConnectChoice) => invoke<Status>("connect", { choice });
export const disconnect = () => invoke<Status>("disconnect");
export const nodes = (role: Role | null = null, country: string | null = null) =>
  invoke<NodeInfo[]>("nodes", { role, country });
export const wallet = (close = false) => invoke<WalletInfo>("wallet", { close });
export const settings = (change: SettingsChange = {}) => invoke<Settings>("settings", { change });
export const choice = () => invoke<ConnectChoice>("choice");
export const autostart = () => invoke<boolean>("autostart");
export const setAutostart = (on: boolean) => invoke<boolean>("set_autostart", { on });

/** Follows the daemon: its status, events and outages, as they happen. */
export const onDaemon = (f: (u: Update) => void): Promise<UnlistenFn> =>
  listen<Update>("daemon", (e) => f(e.payload));

/** Errors from tray actions (connect/disconnect from the tray menu). */
export const onTrayError = (f: (e: GuiError) => void): Promise<UnlistenFn> =>
  listen<GuiError>("tray-error", (e) => f(e.payload));

/** A rejected invoke carries a GuiError; anything else becomes one. */
export function asGuiError(e: unknown): GuiError {
  if (e && typeof e === "object" && "kind" in e && "message" in e) {
    return e as GuiError;
  }
  return { kind: "internal", message: String(e) };
}
