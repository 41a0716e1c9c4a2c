// What a screen gets from the app: the one model, a way to redraw, and
// the app's way of running a command against the daemon.

import type { GuiError } from "./api";
import type { Model } from "./store";

export interface Ctx {
  readonly model: Model;
  /** The clock (ms); tests give their own. */
  now(): number;
  /** Redraws every screen from the model. */
  render(): void;
  /**
   * Runs a command. A rejection that means the daemon cannot be used
   * (daemon_missing, not_permitted, version) shows the full-screen notice;
   * any other goes to `onError` if given, else to the connect screen's
   * command error. Resolves to undefined when it was rejected.
   */
  command<T>(action: string, f: () => Promise<T>, onError?: (e: GuiError) => void): Promise<T | undefined>;
  loadWallet(close?: boolean): Promise<void>;
  loadNodes(): Promise<void>;
  loadExits(): Promise<void>;
  /** Shows a tab. */
  select(tab: Tab): void;
}

export type Tab = "connect" | "circuit" | "money" | "nodes" | "settings";

export interface Screen {
  readonly el: HTMLElement;
  render(m: Model): void;
}
