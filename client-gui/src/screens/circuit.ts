// The live circuit: the path through the hops, the tunnel's addresses,
// and throughput and round trip over the last minute.

import { drawRtt, drawThroughput } from "../chart";
import type { Screen } from "../ctx";
import { h, show, svg, text } from "../dom";
import { bytes, millis, rate, shortId } from "../format";
import { shownState, type Model, type Sample } from "../store";
import type { HopInfo } from "../api";

/** What each hop does, by its place in a circuit of n hops. */
export function hopRole(i: number, n: number): string {
  if (i === n - 1) return "exit";
  if (i === 0) return "guard";
  return "middle";
}

export function circuitScreen(): Screen {
  const path = h("ol", { id: "circuit-path", class: "path", "aria-label": "Circuit" });
  const empty = h("p", { id: "circuit-empty", class: "empty" });
  const fact = (id: string, label: string) => {
    const dd = h("dd", { id });
    return [h("dt", {}, label), dd] as const;
  };
  const [buildDt, buildTime] = fact("build-time", "Built in");
  const [innerDt, innerAddr] = fact("inner-addr", "Tunnel address");
  const [v6Dt, innerV6] = fact("inner-v6", "IPv6");
  const [rttDt, rtt] = fact("rtt", "Round trip");
  const [mtuDt, mtu] = fact("mtu", "MTU");
  const [bytesDt, sessionBytes] = fact("session-bytes", "This session");

  const chart = svg("svg", { id: "throughput-chart", class: "chart", role: "img", "aria-label": "Throughput, last minute" });
  const rttChart = svg("svg", { id: "rtt-chart", class: "chart chart-small", role: "img", "aria-label": "Round trip, last minute" });
  const rxNow = h("span", { id: "rx-now" });
  const txNow = h("span", { id: "tx-now" });
  const chartMax = h("span", { id: "chart-max", class: "hint" });
  const rttMax = h("span", { id: "rtt-max", class: "hint" });

  const el = h(
    "section",
    { id: "screen-circuit", class: "screen circuit", "aria-labelledby": "tab-circuit", hidden: true },
    h("div", { class: "card" }, h("h2", {}, "Path"), path, empty),
    h(
      "div",
      { class: "card chart-card" },
      h(
        "div",
        { class: "legend" },
        h("span", { class: "key key-rx" }, "↓ Download ", rxNow),
        h("span", { class: "key key-tx" }, "↑ Upload ", txNow),
        chartMax,
      ),
      chart,
      h("div", { class: "legend" }, h("span", { class: "key key-rtt" }, "Round trip ", h("span", { id: "rtt-now" })), rttMax),
      rttChart,
      h("p", { class: "hint" }, "Last minute, one sample a second."),
    ),
    h("dl", { class: "card facts" }, buildDt, buildTime, innerDt, innerAddr, v6Dt, innerV6, rttDt, rtt, mtuDt, mtu, bytesDt, sessionBytes),
  );

  let drawnSamples: Sample[] | null = null;
  let drawnLength = -1;
  let drawnPath = "";
  let lastDrawn: Sample | undefined;

  function renderPath(circuit: HopInfo[]): void {
    const key = circuit.map((c) => `${c.id}/${c.region}/${c.addr}`).join(",");
    if (key === drawnPath) return;
    drawnPath = key;
    const items: Node[] = [h("li", { class: "endpoint", "data-testid": "path-client" }, h("span", { class: "node-title" }, "This computer"))];
    circuit.forEach((hop, i) => {
      const role = hopRole(i, circuit.length);
      items.push(h("li", { class: "arrow", "aria-hidden": "true" }, "→"));
      items.push(
        h(
          "li",
          { class: `hop hop-${role}`, "data-id": hop.id, "data-role": role, "data-region": hop.region, title: `${hop.id} at ${hop.addr}` },
          h("span", { class: "hop-role" }, role),
          h("span", { class: "hop-region" }, hop.region || "??"),
          h("span", { class: "hop-id" }, shortId(hop.id)),
        ),
      );
    });
    if (circuit.length > 0) {
      items.push(h("li", { class: "arrow", "aria-hidden": "true" }, "→"));
      items.push(h("li", { class: "endpoint", "data-testid": "path-internet" }, h("span", { class: "node-title" }, "Internet")));
    }
    path.replaceChildren(...items);
  }

  function render(m: Model): void {
    const s = m.status;
    const state = shownState(m);
    const circuit = s?.circuit ?? [];
    renderPath(circuit);
    path.setAttribute("data-hops", String(circuit.length));
    path.classList.toggle("stale", state === "reconnecting");
    show(empty, circuit.length === 0 || state === "reconnecting");
    if (circuit.length === 0) {
      text(
        empty,
        state === "connecting"
          ? "Building the circuit…"
          : state === "reconnecting"
            ? `Rebuilding the circuit (attempt ${s?.attempt ?? 0}): ${s?.error ?? ""}`
            : "No circuit: connect first.",
      );
    } else if (state === "reconnecting") {
      text(empty, `This circuit was lost; rebuilding (attempt ${s?.attempt ?? 0}): ${s?.error ?? ""}`);
    }

    text(buildTime, s?.build_ms != null ? millis(s.build_ms) : "—");
    text(innerAddr, s?.inner_addr ?? "—");
    if (s?.inner_v6) text(innerV6, s.inner_v6);
    else if (s?.ipv6_blocked) text(innerV6, s.ipv6_blocked);
    else if (s?.inner_addr) text(innerV6, "not carried");
    else text(innerV6, "—");
    text(rtt, s?.rtt_ms != null ? millis(s.rtt_ms) : "—");
    text(mtu, s?.mtu != null ? String(s.mtu) : "—");
    text(
      sessionBytes,
      s ? `↓ ${bytes(s.bytes_received)} · ↑ ${bytes(s.bytes_sent)}` : "—",
    );
    text(rxNow, rate(s?.rx_bps ?? 0));
    text(txNow, rate(s?.tx_bps ?? 0));
    text(el.querySelector("#rtt-now")!, s?.rtt_ms != null ? millis(s.rtt_ms) : "—");

    // Redraw only when a sample came or went.
    const last = m.samples[m.samples.length - 1];
    if (m.samples !== drawnSamples || m.samples.length !== drawnLength || last !== lastDrawn) {
      const max = drawThroughput(chart, m.samples);
      text(chartMax, `scale: ${rate(max)}`);
      const rmax = drawRtt(rttChart, m.samples);
      text(rttMax, `scale: ${millis(rmax)}`);
      drawnSamples = m.samples;
      drawnLength = m.samples.length;
      lastDrawn = last;
    }
  }

  return { el, render };
}
