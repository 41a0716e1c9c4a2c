// The app: one model, the screens drawn from it, and the daemon's updates
// applied to it as they arrive (nothing is polled).

import {
  asGuiError,
  autostart,
  choice,
  nodes,
  onDaemon,
  onTrayError,
  status,
  wallet,
  type GuiError,
  type Update,
} from "./api";
import type { Ctx, Screen, Tab } from "./ctx";
import { h, show, text } from "./dom";
import { circuitScreen } from "./screens/circuit";
import { connectScreen } from "./screens/connect";
import { missingScreen } from "./screens/missing";
import { moneyScreen } from "./screens/money";
import { nodesScreen } from "./screens/nodes";
import { settingsScreen } from "./screens/settings";
import { apply, applyStatus, initialModel, OUTAGE_KINDS, shownState, type Model } from "./store";

export const TABS: [Tab, string][] = [
  ["connect", "Connect"],
  ["circuit", "Circuit"],
  ["money", "Money"],
  ["nodes", "Nodes"],
  ["settings", "Settings"],
];

export interface AppOptions {
  /** The clock (ms since the epoch); tests pass their own. */
  now?: () => number;
}

export class App implements Ctx {
  readonly model: Model = initialModel();
  readonly root: HTMLElement;
  readonly now: () => number;
  private screens: Screen[] = [];
  private tabs = new Map<Tab, { button: HTMLButtonElement; screen: Screen }>();
  private current: Tab = "connect";
  private unlisten: (() => void)[] = [];
  private timer: ReturnType<typeof setInterval> | null = null;
  private statusUpdates = 0;
  private headerState!: HTMLElement;
  private failClosed!: HTMLElement;
  private connect!: ReturnType<typeof connectScreen>;
  private loadingWallet: Promise<void> | null = null;
  private loadingNodes: Promise<void> | null = null;

  constructor(root: HTMLElement, options: AppOptions = {}) {
    this.root = root;
    this.now = options.now ?? (() => Date.now());
    this.build();
  }

  private build(): void {
    this.connect = connectScreen(this);
    const screens: Record<Tab, Screen> = {
      connect: this.connect,
      circuit: circuitScreen(),
      money: moneyScreen(this),
      nodes: nodesScreen(this),
      settings: settingsScreen(this),
    };
    const missing = missingScreen(this);

    this.headerState = h("span", { id: "header-state", class: "pill" });
    this.failClosed = h(
      "div",
      { id: "fail-closed", class: "banner banner-danger", role: "alert", hidden: true },
      h("strong", {}, "Everything but the tunnel is blocked. "),
      h("span", { id: "fail-closed-reason" }),
      h("span", { class: "banner-hint" }, " Fix the cause and restart the service (sudo systemctl restart hopwire) to lift the block."),
    );
    const nav = h("nav", { class: "tabs", role: "tablist", "aria-label": "Screens" });
    for (const [tab, label] of TABS) {
      const button = h(
        "button",
        { id: `tab-${tab}`, type: "button", role: "tab", class: "tab", "data-tab": tab, "aria-controls": `screen-${tab}` },
        label,
      );
      button.addEventListener("click", () => this.select(tab));
      nav.append(button);
      this.tabs.set(tab, { button, screen: screens[tab] });
    }
    const header = h("header", { class: "top" }, h("div", { class: "brand" }, h("span", { class: "logo", "aria-hidden": "true" }), "Hopwire"), this.headerState);
    const main = h("main", { class: "screens" }, ...Object.values(screens).map((s) => s.el));
    this.root.replaceChildren(header, this.failClosed, nav, main, missing.el);
    this.screens = [...Object.values(screens), missing];
    this.select("connect");
  }

  /** Follows the daemon and loads what the screens start from. */
  async start(): Promise<void> {
    this.unlisten.push(await onDaemon((u) => this.onUpdate(u)));
    this.unlisten.push(await onTrayError((e) => this.onError("Tray action", e)));
    this.timer = setInterval(() => this.tick(), 1000);
    const seen = this.statusUpdates;
    await Promise.all([
      choice()
        .then((c) => this.connect.fillChoice(c))
        .catch((e) => this.onError("Loading your last choice", asGuiError(e))),
      autostart()
        .then((on) => (this.model.autostart = on))
        .catch(() => (this.model.autostart = null)),
      this.command("Status", () => status()).then((s) => {
        // A status that came through the event stream meanwhile is newer.
        if (s && this.statusUpdates === seen) applyStatus(this.model, s, this.now());
      }),
      this.loadExits(),
    ]);
    this.render();
  }

  stop(): void {
    for (const u of this.unlisten) u();
    this.unlisten = [];
    if (this.timer !== null) clearInterval(this.timer);
    this.timer = null;
  }

  onUpdate(u: Update): void {
    const wasDown = this.model.down !== null;
    apply(this.model, u, this.now());
    if (u.type === "status") {
      this.statusUpdates++;
      if (u.status.state === "connected") this.model.commandError = null;
      // The daemon is back: fetch what failed while it was away.
      if (wasDown && this.model.exits === null) void this.loadExits();
    }
    if (u.type === "event" && u.event.event === "state" && u.event.state.state === "connected") {
      this.model.commandError = null;
    }
    this.render();
  }

  private onError(action: string, e: GuiError): void {
    if (OUTAGE_KINDS.has(e.kind)) {
      this.model.down = e;
      this.model.pendingConnect = false;
    } else {
      this.model.commandError = { ...e, action };
    }
    this.render();
  }

  async command<T>(action: string, f: () => Promise<T>, onError?: (e: GuiError) => void): Promise<T | undefined> {
    try {
      return await f();
    } catch (raw) {
      const e = asGuiError(raw);
      if (OUTAGE_KINDS.has(e.kind) || !onError) this.onError(action, e);
      else onError(e);
      return undefined;
    }
  }

  loadWallet(close = false): Promise<void> {
    if (this.loadingWallet && !close) return this.loadingWallet;
    const p: Promise<void> = this.fetchWallet(close).finally(() => {
      if (this.loadingWallet === p) this.loadingWallet = null;
    });
    this.loadingWallet = p;
    return p;
  }

  private async fetchWallet(close: boolean): Promise<void> {
    const w = await this.command(close ? "Closing channels" : "Wallet", () => wallet(close), (e) => {
      this.model.walletError = e;
    });
    if (w) {
      this.model.wallet = w;
      this.model.walletError = null;
    }
    this.render();
  }

  loadNodes(): Promise<void> {
    if (this.loadingNodes) return this.loadingNodes;
    const run = (async () => {
      const list = await this.command("Nodes", () => nodes(), (e) => {
        this.model.nodesError = e;
      });
      if (list) {
        this.model.nodes = list;
        this.model.nodesError = null;
      }
      this.render();
    })();
    this.loadingNodes = run.finally(() => (this.loadingNodes = null));
    return this.loadingNodes;
  }

  async loadExits(): Promise<void> {
    // Without exits the country list is just "Any": not worth an error.
    try {
      // Only exits, whatever else the answer holds.
      this.model.exits = (await nodes("exit")).filter((n) => n.roles.includes("exit"));
    } catch (raw) {
      const e = asGuiError(raw);
      if (OUTAGE_KINDS.has(e.kind)) this.onError("Nodes", e);
    }
    this.render();
  }

  select(tab: Tab): void {
    this.current = tab;
    for (const [t, { button, screen }] of this.tabs) {
      const on = t === tab;
      button.setAttribute("aria-selected", String(on));
      button.classList.toggle("active", on);
      show(screen.el, on);
    }
    this.root.setAttribute("data-tab", tab);
    if (tab === "money") void this.loadWallet();
    if (tab === "nodes" && this.model.nodes === null) void this.loadNodes();
  }

  get tab(): Tab {
    return this.current;
  }

  /** Once a second: only the elapsed time while connecting changes. */
  tick(): void {
    if (this.model.since !== null) this.render();
  }

  render(): void {
    const m = this.model;
    const state = shownState(m);
    text(this.headerState, state);
    this.headerState.setAttribute("data-state", state);
    const fc = m.status?.fail_closed ?? null;
    show(this.failClosed, fc !== null);
    text(this.failClosed.querySelector("#fail-closed-reason")!, fc ?? "");
    for (const s of this.screens) s.render(m);
  }
}

/** Builds the app in `root` and starts following the daemon. */
export async function startApp(root: HTMLElement, options: AppOptions = {}): Promise<App> {
  const app = new App(root, options);
  app.render();
  await app.start();
  return app;
}
