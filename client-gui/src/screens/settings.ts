// Settings: the daemon's leak and DNS settings (each change is sent at
// once and the settings it answers with are shown), and the app's autostart.

import { setAutostart, settings, type GuiError, type Settings, type SettingsChange } from "../api";
import type { Ctx, Screen } from "../ctx";
import { h, show, text } from "../dom";
import { isIpAddress } from "../format";
import type { Model } from "../store";

type Flag = "lockdown" | "allow_lan" | "ipv6";

/** Reads the DNS field: comma (or space) separated addresses. */
export function parseDns(value: string): string[] | string {
  const parts = value
    .split(/[,\s]+/)
    .map((p) => p.trim())
    .filter((p) => p !== "");
  const bad = parts.filter((p) => !isIpAddress(p));
  if (bad.length) return `Not an IP address: ${bad.join(", ")}`;
  return parts;
}

export function describeSettings(s: Settings): string {
  return [
    `lockdown ${s.lockdown ? "on" : "off"}`,
    `local network ${s.allow_lan ? "allowed" : "blocked"}`,
    `IPv6 ${s.ipv6 ? "through the tunnel" : "blocked"}`,
    `DNS: ${s.dns.length ? s.dns.join(", ") : "the exit's resolver"}`,
  ].join(" · ");
}

export function settingsScreen(ctx: Ctx): Screen {
  const toggle = (id: string, label: string, hint: string) => {
    const input = h("input", { id, type: "checkbox", role: "switch" });
    const row = h(
      "label",
      { class: "toggle", for: id },
      h("span", { class: "toggle-text" }, h("span", { class: "toggle-label" }, label), h("span", { class: "hint" }, hint)),
      input,
      h("span", { class: "switch", "aria-hidden": "true" }),
    );
    return [input, row] as const;
  };
  const [lockdown, lockdownRow] = toggle(
    "setting-lockdown",
    "Lockdown",
    "Block everything but the tunnel, also while disconnected and after a restart.",
  );
  const [allowLan, allowLanRow] = toggle("setting-allow-lan", "Allow local network", "Printers, file shares and the like stay reachable outside the tunnel.");
  const [ipv6, ipv6Row] = toggle("setting-ipv6", "IPv6", "Carry IPv6 through the tunnel when the exit offers it; off, IPv6 is blocked.");
  const [autostart, autostartRow] = toggle("setting-autostart", "Start with the session", "Open Hopwire in the tray when you log in.");
  const flags: Record<Flag, HTMLInputElement> = { lockdown, allow_lan: allowLan, ipv6 };

  const dns = h("input", {
    id: "setting-dns",
    type: "text",
    placeholder: "the exit's resolver",
    autocomplete: "off",
    spellcheck: "false",
    "aria-label": "DNS servers",
  });
  const dnsSave = h("button", { id: "setting-dns-save", type: "submit", class: "button" }, "Apply");
  const dnsForm = h(
    "form",
    { class: "dns", id: "dns-form", novalidate: true },
    h("label", { for: "setting-dns", class: "toggle-label" }, "DNS servers"),
    h("div", { class: "row" }, dns, dnsSave),
    h("span", { class: "hint" }, "Comma-separated addresses, used through the tunnel. Empty: the exit's resolver."),
  );
  const error = h("div", { id: "settings-error", class: "notice notice-error", role: "alert", hidden: true });
  const summary = h("p", { id: "settings-summary", class: "hint" });

  const el = h(
    "section",
    { id: "screen-settings", class: "screen settings", "aria-labelledby": "tab-settings", hidden: true },
    h("div", { class: "card" }, h("h2", {}, "Privacy"), lockdownRow, allowLanRow, ipv6Row, dnsForm, error, h("div", {}, "In force: ", summary)),
    h("div", { class: "card" }, h("h2", {}, "App"), autostartRow),
  );

  /** The settings the daemon last answered with. */
  let answered: Settings | null = null;
  let dnsDirty = false;

  function fail(e: GuiError): void {
    text(error, `The settings could not be changed: ${e.message}`);
    show(error, true);
  }

  async function change(c: SettingsChange, inputs: HTMLElement[]): Promise<boolean> {
    show(error, false);
    inputs.forEach((i) => ((i as HTMLInputElement).disabled = true));
    const result = await ctx.command("Settings", () => settings(c), fail);
    inputs.forEach((i) => ((i as HTMLInputElement).disabled = false));
    if (result) {
      answered = result;
      if (ctx.model.status) ctx.model.status.settings = result;
    }
    ctx.render();
    return result !== undefined;
  }

  for (const [flag, input] of Object.entries(flags) as [Flag, HTMLInputElement][]) {
    input.addEventListener("change", () => {
      void change({ [flag]: input.checked }, [input]);
    });
  }

  dns.addEventListener("input", () => (dnsDirty = true));
  dnsForm.addEventListener("submit", async (e) => {
    e.preventDefault();
    const list = parseDns(dns.value);
    if (typeof list === "string") {
      text(error, list);
      show(error, true);
      return;
    }
    if (await change({ dns: list }, [dns, dnsSave])) dnsDirty = false;
    ctx.render();
  });

  autostart.addEventListener("change", async () => {
    show(error, false);
    const want = autostart.checked;
    autostart.disabled = true;
    const on = await ctx.command("Autostart", () => setAutostart(want), (e) => {
      text(error, `Autostart could not be changed: ${e.message}`);
      show(error, true);
    });
    autostart.disabled = false;
    if (on !== undefined) ctx.model.autostart = on;
    ctx.render();
  });

  function render(m: Model): void {
    const s = m.status?.settings ?? answered;
    for (const [flag, input] of Object.entries(flags) as [Flag, HTMLInputElement][]) {
      if (!input.disabled) input.checked = s ? s[flag] : false;
    }
    if (s) {
      text(summary, describeSettings(s));
      summary.setAttribute("data-lockdown", String(s.lockdown));
      summary.setAttribute("data-allow-lan", String(s.allow_lan));
      summary.setAttribute("data-ipv6", String(s.ipv6));
      summary.setAttribute("data-dns", s.dns.join(","));
      if (!dnsDirty && document.activeElement !== dns) dns.value = s.dns.join(", ");
    } else {
      text(summary, "unknown until the service answers");
    }
    if (!autostart.disabled) autostart.checked = m.autostart === true;
    autostart.indeterminate = m.autostart === null;
  }

  return { el, render };
}
