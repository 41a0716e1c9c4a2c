// The full screen shown while the daemon cannot be used: not running,
// refusing this user, or speaking another API version. It goes away by
// itself when the daemon's status arrives again.

import { status } from "../api";
import type { Ctx, Screen } from "../ctx";
import { h, show, text } from "../dom";
import { applyStatus, type Model } from "../store";

/** Title and hint for each kind of outage. */
export function outageWords(kind: string): { title: string; hint: string } {
  switch (kind) {
    case "not_permitted":
      return {
        title: "The Hopwire service does not let you in",
        hint: "Join the hopwire group: sudo usermod -aG hopwire $USER, then log out and in again.",
      };
    case "version":
      return {
        title: "This app and the Hopwire service do not match",
        hint: "They speak different API versions: update the app or the service (the daemon) so both are the same release.",
      };
    default:
      return {
        title: "The Hopwire service is not running",
        hint: "To start it at every boot: sudo systemctl enable --now hopwire. If it runs and this window still says so, you may need to join the hopwire group (sudo usermod -aG hopwire $USER, then log in again).",
      };
  }
}

export function missingScreen(ctx: Ctx): Screen {
  const title = h("h1", { id: "daemon-missing-title" });
  const message = h("p", { id: "daemon-missing-message", class: "message" });
  const hint = h("p", { id: "daemon-missing-hint", class: "hint-box" });
  const retry = h("button", { id: "daemon-retry", type: "button", class: "button" }, "Check again");
  const note = h("p", { id: "daemon-missing-note", class: "hint" });
  const el = h(
    "div",
    { id: "daemon-missing", class: "overlay", role: "alertdialog", "aria-labelledby": "daemon-missing-title", hidden: true },
    h("div", { class: "overlay-box" }, h("div", { class: "overlay-icon", "aria-hidden": "true" }, "!"), title, message, hint, retry, note),
  );

  retry.addEventListener("click", async () => {
    retry.disabled = true;
    const s = await ctx.command("Status", () => status());
    retry.disabled = false;
    if (s) applyStatus(ctx.model, s, ctx.now());
    ctx.render();
  });

  function render(m: Model): void {
    const down = m.down;
    show(el, down !== null);
    document.body.classList.toggle("daemon-down", down !== null);
    if (!down) return;
    const words = outageWords(down.kind);
    el.setAttribute("data-kind", down.kind);
    text(title, words.title);
    text(message, down.message);
    text(hint, words.hint);
    text(
      note,
      down.kind === "version"
        ? "Once both are the same release, this window carries on by itself."
        : "This window carries on by itself as soon as the service answers.",
    );
  }

  return { el, render };
}
