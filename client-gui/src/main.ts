// Hopwire's window: the entry point. Everything reaches the daemon
// through ./api.ts; the state lives in one model (./store.ts) that the
// daemon's `daemon` events update; nothing is polled.
//
// Stable element ids for WebDriver tests (all always in the DOM; a
// screen not shown carries `hidden`):
//   Tabs:      #tab-connect #tab-circuit #tab-money #tab-nodes #tab-settings
//              (aria-selected="true" on the shown one); screens
//              #screen-connect #screen-circuit #screen-money #screen-nodes
//              #screen-settings.
//   Anywhere:  #header-state (state word), #fail-closed (red banner, shown
//              while status.fail_closed is set; reason in #fail-closed-reason),
//              #daemon-missing (full screen while the daemon cannot be used;
//              data-kind = daemon_missing | not_permitted | version;
//              #daemon-missing-message = the error's message,
//              #daemon-missing-hint = what to do, #daemon-retry).
//   Connect:   #connect-button (text Connect / Disconnect / Cancel),
//              #state (text = disconnected | connecting | connected |
//              reconnecting | error; also data-state), #state-title,
//              #state-reason (why; while connecting or reconnecting it
//              includes the elapsed time, data-elapsed = seconds),
//              #state-advice (what to do), #command-error (a rejected
//              command; data-kind), #country (select, "" = any),
//              #hops (select 1–3), #max-price (text, units/GiB, empty = no
//              cap), #max-price-hint, #choice-error, #exits-hint.
//   Circuit:   #circuit-path (data-hops; one li.hop per hop, in order, with
//              data-id = short id, data-role = guard|middle|exit,
//              data-region), #circuit-empty, #build-time, #inner-addr,
//              #inner-v6, #rtt, #mtu, #session-bytes, #rx-now, #tx-now,
//              #throughput-chart (svg; data-points = samples drawn,
//              data-last-rx, data-last-tx, data-max), #rtt-chart
//              (data-points, data-last-rtt).
//   Money:     #spent, #payments (table; tr.payment per hop with data-id,
//              data-paid, data-bytes), #payments-empty, #wallet,
//              #balance (data-balance), #wallet-account, #wallet-ledger,
//              #channels (tr.channel with data-id = channel, data-payee,
//              data-state = open|closing|finalized), #close-channels,
//              #wallet-note, #wallet-refresh, #wallet-error, #sessions.
//   Nodes:     #nodes-table (data-sort, data-dir; tr.node with data-id,
//              data-region, data-roles, data-price, data-rtt; sortable
//              th[data-sort=price|rtt|region|capacity]), #nodes-role,
//              #nodes-country, #nodes-sort, #nodes-refresh, #nodes-count,
//              #nodes-empty, #nodes-error.
//   Settings:  #setting-lockdown, #setting-allow-lan, #setting-ipv6,
//              #setting-autostart (checkboxes), #setting-dns (text, comma
//              separated) with #setting-dns-save, #settings-summary (the
//              settings in force, data-lockdown/-allow-lan/-ipv6/-dns),
//              #settings-error.

import "./style.css";
import { startApp } from "./app";

const root = document.getElementById("app");
if (root) {
  startApp(root).catch((e: unknown) => {
    root.textContent = `Hopwire could not start its window: ${String(e)}`;
  });
}
