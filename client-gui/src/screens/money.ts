// Money: what this session paid each hop, and the wallet (balance and
// payment channels), with a button to close the channels no circuit uses.

import type { ChannelInfo, HopPayment, WalletInfo } from "../api";
import type { Ctx, Screen } from "../ctx";
import { h, show, text } from "../dom";
import { bytes, pricePerGib, shortId, units, when } from "../format";
import { channelState, type Model } from "../store";

export function moneyScreen(ctx: Ctx): Screen {
  const paymentsBody = h("tbody");
  const payments = h(
    "table",
    { id: "payments", class: "table" },
    h("thead", {}, h("tr", {}, h("th", {}, "Hop"), h("th", {}, "Region"), h("th", { class: "num" }, "Price"), h("th", { class: "num" }, "Carried"), h("th", { class: "num" }, "Paid"))),
    paymentsBody,
  );
  const paymentsEmpty = h("p", { id: "payments-empty", class: "empty" }, "Nothing paid yet this session.");
  const spent = h("span", { id: "spent" });
  const paymentBytes = h("span", { id: "payment-bytes", class: "hint" });

  const account = h("dd", { id: "wallet-account", class: "mono" });
  const ledger = h("dd", { id: "wallet-ledger", class: "mono" });
  const balance = h("dd", { id: "balance" });
  const channelsBody = h("tbody");
  const channels = h(
    "table",
    { id: "channels", class: "table" },
    h(
      "thead",
      {},
      h(
        "tr",
        {},
        h("th", {}, "Hop"),
        h("th", { class: "num" }, "Price"),
        h("th", { class: "num" }, "Deposit"),
        h("th", { class: "num" }, "Spent"),
        h("th", { class: "num" }, "Carried"),
        h("th", {}, "State"),
      ),
    ),
    channelsBody,
  );
  const channelsEmpty = h("p", { id: "channels-empty", class: "empty" }, "No payment channels.");
  const closeButton = h("button", { id: "close-channels", type: "button", class: "button" }, "Close unused channels");
  const refresh = h("button", { id: "wallet-refresh", type: "button", class: "button subtle" }, "Refresh");
  const walletError = h("div", { id: "wallet-error", class: "notice notice-error", role: "alert", hidden: true });
  const walletNote = h("div", { id: "wallet-note", class: "hint" });
  const sessions = h("ol", { id: "sessions", class: "sessions" });

  const wallet = h(
    "div",
    { id: "wallet", class: "card" },
    h("div", { class: "card-head" }, h("h2", {}, "Wallet"), refresh),
    walletError,
    h("dl", { class: "facts" }, h("dt", {}, "Balance"), balance, h("dt", {}, "Account"), account, h("dt", {}, "Ledger"), ledger),
    h("h3", {}, "Payment channels"),
    h("div", { class: "table-wrap" }, channels),
    channelsEmpty,
    h("div", { class: "row" }, closeButton, walletNote),
    h("h3", {}, "Recent sessions"),
    sessions,
  );

  const el = h(
    "section",
    { id: "screen-money", class: "screen money", "aria-labelledby": "tab-money", hidden: true },
    h(
      "div",
      { class: "card" },
      h("div", { class: "card-head" }, h("h2", {}, "This session"), h("div", {}, "Paid ", spent)),
      h("div", { class: "table-wrap" }, payments),
      paymentsEmpty,
      paymentBytes,
    ),
    wallet,
  );

  refresh.addEventListener("click", () => void ctx.loadWallet());
  closeButton.addEventListener("click", async () => {
    closeButton.disabled = true;
    text(walletNote, "Closing unused channels…");
    await ctx.loadWallet(true);
    const w = ctx.model.wallet;
    closeButton.disabled = !w || !w.channels.some((c) => channelState(c) === "open");
    if (w && !ctx.model.walletError) {
      const closing = w.channels.filter((c) => channelState(c) === "closing").length;
      text(walletNote, closing ? `${closing} ${closing === 1 ? "channel is" : "channels are"} closing; their deposits come back when the close takes effect.` : "No channel was left to close.");
    } else {
      text(walletNote, "");
    }
  });

  let drawnPayments: HopPayment[] | null = null;
  let drawnWallet: WalletInfo | null = null;

  function renderPayments(m: Model): void {
    const list = m.status?.payments ?? [];
    if (list === drawnPayments) return;
    drawnPayments = list;
    const regions = new Map((m.status?.circuit ?? []).map((c) => [c.id, c.region]));
    paymentsBody.replaceChildren(
      ...list.map((p) =>
        h(
          "tr",
          { class: "payment", "data-id": p.id, "data-paid": p.paid, "data-bytes": p.bytes },
          h("td", { class: "mono", title: p.id }, shortId(p.id)),
          h("td", {}, regions.get(p.id) ?? "—"),
          h("td", { class: "num" }, pricePerGib(p.price_per_gib)),
          h("td", { class: "num" }, bytes(p.bytes)),
          h("td", { class: "num paid" }, units(p.paid)),
        ),
      ),
    );
    show(payments, list.length > 0);
    show(paymentsEmpty, list.length === 0);
  }

  function channelRow(c: ChannelInfo): HTMLElement {
    const state = channelState(c);
    const stateText =
      state === "closing" && c.close_at !== null ? `closing (takes effect ${when(c.close_at)})` : state;
    return h(
      "tr",
      { class: "channel", "data-id": c.channel, "data-payee": c.payee, "data-state": state, title: `channel ${c.channel}` },
      h("td", { class: "mono", title: c.payee }, shortId(c.payee)),
      h("td", { class: "num" }, pricePerGib(c.price_per_gib)),
      h("td", { class: "num" }, units(c.deposit)),
      h("td", { class: "num" }, units(c.signed)),
      h("td", { class: "num" }, bytes(c.bytes)),
      h("td", { class: `state state-${state}` }, stateText),
    );
  }

  function renderWallet(m: Model): void {
    show(walletError, m.walletError !== null);
    if (m.walletError) text(walletError, `The wallet could not be read: ${m.walletError.message}`);
    const w = m.wallet;
    if (w === drawnWallet) return;
    drawnWallet = w;
    if (!w) {
      text(balance, "—");
      text(account, "—");
      text(ledger, "—");
      channelsBody.replaceChildren();
      show(channels, false);
      show(channelsEmpty, true);
      sessions.replaceChildren();
      return;
    }
    if (w.balance !== null) {
      text(balance, units(w.balance));
      balance.classList.remove("bad");
    } else {
      text(balance, `unknown: ${w.ledger_error ?? "the ledger did not answer"}`);
      balance.classList.add("bad");
    }
    balance.setAttribute("data-balance", w.balance === null ? "" : String(w.balance));
    text(account, w.account);
    text(ledger, w.ledger);
    channelsBody.replaceChildren(...w.channels.map(channelRow));
    show(channels, w.channels.length > 0);
    show(channelsEmpty, w.channels.length === 0);
    closeButton.disabled = !w.channels.some((c) => channelState(c) === "open");
    sessions.replaceChildren(
      ...w.sessions.slice(0, 5).map((s) =>
        h(
          "li",
          { class: "session" },
          `${when(s.started_at)}: ${units(s.spent)} to ${Object.keys(s.hops).length} ${Object.keys(s.hops).length === 1 ? "hop" : "hops"}`,
        ),
      ),
    );
    if (w.sessions.length === 0) sessions.replaceChildren(h("li", { class: "empty" }, "None yet."));
  }

  function render(m: Model): void {
    text(spent, units(m.status?.spent ?? 0));
    text(paymentBytes, m.status?.payment_bytes ? `Payment messages: ${bytes(m.status.payment_bytes)} on your link.` : "");
    renderPayments(m);
    renderWallet(m);
  }

  return { el, render };
}
