// The connect screen: the state, one big connect/disconnect control, and
// the choice of exit country, hop count and price cap.

import { connect, disconnect, type ConnectChoice } from "../api";
import type { Ctx, Screen } from "../ctx";
import { byId, h, show, text } from "../dom";
import { advice, elapsed, kindTitle, millis, parsePrice, pricePerGib, shortId, thousands } from "../format";
import { applyStatus, shownState, track, type Model } from "../store";

const DEFAULT_HOPS = 3;

export interface ConnectScreen extends Screen {
  /** Puts the remembered (or given) choice into the form. */
  fillChoice(c: ConnectChoice): void;
}

function describeChoice(c: ConnectChoice): string {
  const hops = c.hops ?? DEFAULT_HOPS;
  const where = c.country ? `an exit in ${c.country}` : "an exit in any country";
  const cap = c.max_price !== null ? `, at most ${pricePerGib(c.max_price)}` : "";
  return `${hops}-hop circuit to ${where}${cap}`;
}

/** The line under the state word: why the state is what it is. */
export function reasonFor(m: Model, now: number): string {
  const s = m.status;
  const state = shownState(m);
  const secs = m.since !== null ? elapsed((now - m.since) / 1000) : null;
  switch (state) {
    case "connecting": {
      const what =
        s?.state === "connecting"
          ? `Building a ${describeChoice(m.choice)}`
          : `Asking the service for a ${describeChoice(m.choice)}`;
      return secs !== null ? `${what} — ${secs} so far` : what;
    }
    case "reconnecting": {
      const attempt = s?.attempt ?? 0;
      const why = s?.error ?? "the circuit was lost";
      return `The circuit was lost (${why}). Building a new one, attempt ${attempt}${secs !== null ? ` — ${secs} so far` : ""}.`;
    }
    case "error":
      return s?.error ?? "Connecting failed.";
    case "connected": {
      if (!s) return "";
      const exit = s.exit ?? (s.circuit.length ? s.circuit[s.circuit.length - 1] : null);
      const parts: string[] = [];
      if (exit) parts.push(`Exit in ${exit.region} (${shortId(exit.id)})`);
      if (s.circuit.length) parts.push(`${s.circuit.length} ${s.circuit.length === 1 ? "hop" : "hops"}`);
      if (s.build_ms !== null) parts.push(`built in ${millis(s.build_ms)}`);
      if (s.inner_addr) parts.push(`address ${s.inner_addr}`);
      return parts.join(" · ");
    }
    case "disconnected": {
      if (s?.settings.lockdown) return "Not connected. Lockdown is on: nothing leaves this computer until you connect.";
      const last = s?.error ? ` Last attempt: ${s.error}` : "";
      return `Not connected: your traffic goes out directly.${last}`;
    }
  }
}

/** What the user can do, under the reason. */
function adviceFor(m: Model, now: number): string {
  const s = m.status;
  switch (shownState(m)) {
    case "error":
      return advice(s?.error_kind ?? "internal");
    case "reconnecting":
      return "Your traffic is held back until the new circuit is up: nothing leaks meanwhile.";
    case "connecting":
      if (m.since !== null && now - m.since > 30_000) {
        return "This takes longer than usual: the service gives up after 90 s. Cancel to stop trying.";
      }
      return "";
    default:
      return "";
  }
}

export function connectScreen(ctx: Ctx): ConnectScreen {
  const country = h("select", { id: "country", "aria-label": "Exit country" }, h("option", { value: "" }, "Any"));
  const hops = h(
    "select",
    { id: "hops", "aria-label": "Hops" },
    h("option", { value: "1" }, "1 hop (fastest, least private)"),
    h("option", { value: "2" }, "2 hops"),
    h("option", { value: "3" }, "3 hops (recommended)"),
  );
  hops.value = String(DEFAULT_HOPS);
  const maxPrice = h("input", {
    id: "max-price",
    type: "text",
    inputmode: "numeric",
    placeholder: "no cap",
    autocomplete: "off",
    spellcheck: "false",
  });
  const priceHint = h("div", { id: "max-price-hint", class: "hint" });
  const exitsHint = h("div", { id: "exits-hint", class: "hint" });
  const choiceError = h("div", { id: "choice-error", class: "field-error", role: "alert", hidden: true });

  const button = h("button", { id: "connect-button", class: "big-button", type: "button" }, "Connect");
  const ring = h("div", { class: "ring", "data-testid": "state-ring", "aria-hidden": "true" }, h("div", { class: "ring-core" }));
  const stateWord = h("div", { id: "state", class: "state-word", role: "status", "aria-live": "polite" }, "disconnected");
  const title = h("div", { id: "state-title", class: "state-title" });
  const reason = h("div", { id: "state-reason", class: "state-reason" });
  const adviceEl = h("div", { id: "state-advice", class: "state-advice" });
  const cmdError = h(
    "div",
    { id: "command-error", class: "notice notice-error", role: "alert", hidden: true },
    h("strong", { id: "command-error-title" }),
    h("div", { id: "command-error-message" }),
    h("div", { id: "command-error-advice", class: "advice" }),
  );

  const el = h(
    "section",
    { id: "screen-connect", class: "screen connect", "aria-labelledby": "tab-connect" },
    h("div", { class: "state-panel" }, ring, stateWord, title, reason, adviceEl, button, cmdError),
    h(
      "form",
      { id: "choice", class: "card choice", novalidate: true },
      h("h2", {}, "Your circuit"),
      h("label", { for: "country" }, "Exit country"),
      country,
      exitsHint,
      h("label", { for: "hops" }, "Hops"),
      hops,
      h("label", { for: "max-price" }, "Price cap (units/GiB)"),
      maxPrice,
      priceHint,
      choiceError,
      h("p", { class: "hint" }, "Your choice is remembered for the next time."),
    ),
  );

  let attempt = 0;

  /** The choice in the form, or an error message. */
  function readChoice(): ConnectChoice | string {
    const price = parsePrice(maxPrice.value);
    if (price === undefined) return "The price cap must be a whole number of units per GiB (e.g. 2,000,000), or empty for no cap.";
    const n = Number(hops.value);
    if (!(n >= 1 && n <= 3)) return "Choose 1 to 3 hops.";
    return { country: country.value || null, hops: n, max_price: price };
  }

  function updatePriceHint(): void {
    const price = parsePrice(maxPrice.value);
    if (price === undefined) text(priceHint, "Not a number: type a whole number of units, e.g. 2,000,000.");
    else if (price === null) text(priceHint, "No cap: any price.");
    else text(priceHint, `At most ${pricePerGib(price)}.`);
    priceHint.classList.toggle("bad", price === undefined);
  }
  maxPrice.addEventListener("input", updatePriceHint);

  async function doConnect(): Promise<void> {
    const c = readChoice();
    if (typeof c === "string") {
      text(choiceError, c);
      show(choiceError, true);
      return;
    }
    show(choiceError, false);
    const m = ctx.model;
    const mine = ++attempt;
    m.choice = c;
    m.commandError = null;
    const before = shownState(m);
    m.pendingConnect = true;
    track(m, before, ctx.now());
    ctx.render();
    const status = await ctx.command("Connect", () => connect(c));
    if (mine !== attempt) return; // cancelled meanwhile
    const pending = shownState(m);
    m.pendingConnect = false;
    if (status) applyStatus(m, status, ctx.now());
    else track(m, pending, ctx.now());
    ctx.render();
  }

  async function doDisconnect(): Promise<void> {
    const m = ctx.model;
    attempt++;
    const before = shownState(m);
    m.pendingConnect = false;
    track(m, before, ctx.now());
    m.commandError = null;
    ctx.render();
    const status = await ctx.command("Disconnect", () => disconnect());
    if (status) applyStatus(m, status, ctx.now());
    ctx.render();
  }

  button.addEventListener("click", () => {
    const state = shownState(ctx.model);
    if (state === "disconnected" || state === "error") void doConnect();
    else void doDisconnect();
  });
  el.querySelector("form")!.addEventListener("submit", (e) => e.preventDefault());

  function fillCountries(m: Model): void {
    const regions = new Set<string>();
    for (const n of m.exits ?? []) if (n.region) regions.add(n.region.toUpperCase());
    if (m.choice.country) regions.add(m.choice.country.toUpperCase());
    const counts = new Map<string, number>();
    for (const n of m.exits ?? []) counts.set(n.region.toUpperCase(), (counts.get(n.region.toUpperCase()) ?? 0) + 1);
    const wanted = ["", ...[...regions].sort()];
    const have = [...country.options].map((o) => o.value);
    if (wanted.join(",") !== have.join(",")) {
      const value = country.value;
      country.replaceChildren(
        ...wanted.map((r) => {
          if (r === "") return h("option", { value: "" }, "Any");
          const c = counts.get(r);
          return h("option", { value: r }, c ? `${r} (${c} ${c === 1 ? "exit" : "exits"})` : r);
        }),
      );
      country.value = value;
    }
    if (m.exits === null) text(exitsHint, "Looking up exits…");
    else if (m.exits.length === 0) text(exitsHint, "No exits known yet.");
    else {
      const cheapest = Math.min(...m.exits.map((n) => n.price_per_gib));
      text(exitsHint, `${m.exits.length} ${m.exits.length === 1 ? "exit" : "exits"} known, from ${pricePerGib(cheapest)}.`);
    }
  }

  function fillChoice(c: ConnectChoice): void {
    ctx.model.choice = c;
    fillCountries(ctx.model);
    country.value = c.country ? c.country.toUpperCase() : "";
    hops.value = String(c.hops && c.hops >= 1 && c.hops <= 3 ? c.hops : DEFAULT_HOPS);
    maxPrice.value = c.max_price !== null && c.max_price !== undefined ? thousands(c.max_price) : "";
    updatePriceHint();
  }

  function render(m: Model): void {
    const now = ctx.now();
    const state = shownState(m);
    el.setAttribute("data-state", state);
    ring.setAttribute("data-state", state);
    text(stateWord, state);
    stateWord.setAttribute("data-state", state);
    const titles: Record<string, string> = {
      disconnected: "Unprotected",
      connecting: "Creating a secure circuit",
      connected: "Secure circuit",
      reconnecting: "Restoring the circuit",
      error: kindTitle(m.status?.error_kind ?? "internal"),
    };
    text(title, titles[state]);
    text(reason, reasonFor(m, now));
    reason.setAttribute("data-elapsed", m.since !== null ? String(Math.floor((now - m.since) / 1000)) : "");
    const a = adviceFor(m, now);
    text(adviceEl, a);
    show(adviceEl, a !== "");
    text(button, state === "connecting" ? "Cancel" : state === "connected" || state === "reconnecting" ? "Disconnect" : "Connect");
    button.setAttribute("data-action", button.textContent!.toLowerCase());
    button.classList.toggle("danger", state === "connected" || state === "reconnecting" || state === "connecting");

    const busy = state === "connecting" || state === "connected" || state === "reconnecting";
    country.disabled = busy;
    hops.disabled = busy;
    maxPrice.disabled = busy;

    // A rejected connect usually also turns the state to error with the
    // same words: say it once.
    const ce =
      m.commandError && !(state === "error" && m.status?.error === m.commandError.message) ? m.commandError : null;
    show(cmdError, ce !== null);
    if (ce) {
      text(byId(cmdError, "command-error-title"), `${ce.action} failed: ${kindTitle(ce.kind)}`);
      text(byId(cmdError, "command-error-message"), ce.message);
      text(byId(cmdError, "command-error-advice"), advice(ce.kind));
      cmdError.setAttribute("data-kind", ce.kind);
    }
    fillCountries(m);
  }

  updatePriceHint();
  return { el, render, fillChoice };
}
