// Words and numbers as the screens show them: ledger amounts, prices,
// bytes, rates, times, and what to do about each kind of error.

import type { ErrorKind } from "./api";

/** 2000000 → "2,000,000" (whole ledger units; never rounded). */
export function thousands(n: number): string {
  const whole = Math.trunc(n);
  const sign = whole < 0 ? "-" : "";
  return sign + String(Math.abs(whole)).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
}

/** An amount of the ledger's smallest unit: "12,345 units". */
export function units(n: number): string {
  return `${thousands(n)} ${Math.abs(n) === 1 ? "unit" : "units"}`;
}

/** A price per GiB: "2,000,000 units/GiB". */
export function pricePerGib(n: number): string {
  return `${thousands(n)} units/GiB`;
}

/** Reads a price the user typed: digits with optional separators
 * (`2,000,000`, `2 000 000`, `2_000_000`) or a k/M/G suffix (`2M`, `1.5k`).
 * Empty is `null` (no cap); anything else unreadable is `undefined`. */
export function parsePrice(text: string): number | null | undefined {
  const t = text.trim().replace(/[\s,_']/g, "");
  if (t === "") return null;
  const m = /^(\d+(?:\.\d+)?)([kKmMgG]?)$/.exec(t);
  if (!m) return undefined;
  const factor = { "": 1, k: 1e3, m: 1e6, g: 1e9 }[m[2].toLowerCase() as "" | "k" | "m" | "g"];
  const value = Number(m[1]) * factor;
  if (!Number.isFinite(value) || !Number.isInteger(value) || value > Number.MAX_SAFE_INTEGER) return undefined;
  return value;
}

const BYTE_UNITS = ["B", "KiB", "MiB", "GiB", "TiB"];

/** 1536 → "1.5 KiB". */
export function bytes(n: number): string {
  let v = n;
  let i = 0;
  while (Math.abs(v) >= 1024 && i < BYTE_UNITS.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${v} B` : `${v >= 100 ? v.toFixed(0) : v.toFixed(1)} ${BYTE_UNITS[i]}`;
}

/** Bits per second: 3200000 → "3.2 Mbit/s". */
export function rate(bps: number): string {
  const steps: [number, string][] = [
    [1e9, "Gbit/s"],
    [1e6, "Mbit/s"],
    [1e3, "kbit/s"],
  ];
  for (const [size, name] of steps) {
    if (bps >= size) {
      const v = bps / size;
      return `${v >= 100 ? v.toFixed(0) : v.toFixed(1)} ${name}`;
    }
  }
  return `${Math.round(bps)} bit/s`;
}

/** Milliseconds, as a round trip or a build time: "42 ms", "1.3 s". */
export function millis(ms: number): string {
  if (ms < 10) return `${(Math.round(ms * 10) / 10).toString()} ms`;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  return `${(ms / 1000).toFixed(1)} s`;
}

/** Whole seconds elapsed: "7 s", "1 min 05 s", "2 h 05 min", "3 d 4 h". */
export function elapsed(seconds: number): string {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s} s`;
  if (s >= 86400) return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
  if (s >= 3600) return `${Math.floor(s / 3600)} h ${String(Math.floor((s % 3600) / 60)).padStart(2, "0")} min`;
  const m = Math.floor(s / 60);
  return `${m} min ${String(s % 60).padStart(2, "0")} s`;
}

/** Unix seconds as a local date and time. */
export function when(unixSeconds: number): string {
  const d = new Date(unixSeconds * 1000);
  const pad = (n: number) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

/** A long hex id shortened for a table cell. */
export function shortId(id: string, keep = 12): string {
  return id.length <= keep ? id : `${id.slice(0, keep)}…`;
}

/** What the user can do about an error of each kind. */
export function advice(kind: ErrorKind | string): string {
  switch (kind) {
    case "no_exit":
      return "No exit matches your choice. Pick another country, or raise the price cap (or clear it).";
    case "hop_unreachable":
      return "A hop could not be reached. Try again: a new circuit goes through other nodes.";
    case "exit_refused":
      return "The exit refused the session. Try again, or pick another country.";
    case "funds":
      return "Your account cannot pay for this circuit. Top up the account, or close unused channels on the Money tab to get their deposits back.";
    case "ledger_unreachable":
      return "The payment ledger cannot be reached. Check this computer's internet connection, then try again.";
    case "config":
      return "The service is not set up for this. Check its configuration, then restart it (sudo systemctl restart hopwire).";
    case "platform":
      return "The system refused to set up the tunnel. See the service's log: journalctl -u hopwire.";
    case "not_permitted":
      return "The service does not let this user steer it. Join the hopwire group (sudo usermod -aG hopwire $USER), then log in again.";
    case "bad_input":
      return "Check your choices: 1 to 3 hops, a two-letter country, a whole number as the price cap.";
    case "version":
      return "The app and the service speak different API versions. Update the app or the service so they match.";
    case "daemon_missing":
      return "Start the service: sudo systemctl start hopwire.";
    case "internal":
      return "Something failed inside the service. Try again; if it keeps failing, see journalctl -u hopwire.";
    default:
      return "Try again; if it keeps failing, see the service's log: journalctl -u hopwire.";
  }
}

/** A short title for an error kind. */
export function kindTitle(kind: ErrorKind | string): string {
  const titles: Record<string, string> = {
    no_exit: "No matching exit",
    hop_unreachable: "A hop is unreachable",
    exit_refused: "The exit refused",
    funds: "Not enough funds",
    ledger_unreachable: "Ledger unreachable",
    config: "Service not configured for this",
    platform: "The system refused the tunnel",
    not_permitted: "Not permitted",
    bad_input: "Invalid choice",
    version: "Version mismatch",
    internal: "Internal error",
    daemon_missing: "Service not running",
  };
  return titles[kind] ?? "Error";
}

/** Whether `text` is an IPv4 or IPv6 address (as the daemon's settings accept). */
export function isIpAddress(text: string): boolean {
  const v4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;
  if (v4.test(text)) return true;
  if (!/^[0-9a-fA-F:.]+$/.test(text) || !text.includes(":")) return false;
  try {
    // The URL parser validates (and rejects) IPv6 literals exactly.
    new URL(`http://[${text}]/`);
    return true;
  } catch {
    return false;
  }
}
