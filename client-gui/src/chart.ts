// The circuit's charts, drawn as inline SVG: download and upload
// throughput over the last minute, and the round trip below it.

import { svg } from "./dom";
import { CHART_SAMPLES, type Sample } from "./store";

const W = 600;
const H = 160;

/** The smallest 1/2/5 × 10ⁿ at or above `v`. */
export function niceCeil(v: number): number {
  if (v <= 0) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) {
    if (m * p >= v) return m * p;
  }
  return 10 * p;
}

function x(i: number, n: number): number {
  // The newest sample sits at the right edge; older ones to its left.
  const slot = CHART_SAMPLES - n + i;
  return (W * slot) / (CHART_SAMPLES - 1);
}

function points(values: number[], max: number, height: number): string {
  const n = values.length;
  return values
    .map((v, i) => `${x(i, n).toFixed(1)},${(height - (height * Math.min(v, max)) / max).toFixed(1)}`)
    .join(" ");
}

function grid(el: SVGElement, height: number): void {
  for (const f of [0.25, 0.5, 0.75]) {
    el.append(svg("line", { x1: 0, x2: W, y1: height * f, y2: height * f, class: "grid", "vector-effect": "non-scaling-stroke" }));
  }
}

/** Redraws the throughput chart; returns the scale's top (bits/s). */
export function drawThroughput(el: SVGElement, samples: Sample[]): number {
  const max = niceCeil(Math.max(1000, ...samples.map((s) => Math.max(s.rx, s.tx))));
  el.replaceChildren();
  el.setAttribute("viewBox", `0 0 ${W} ${H}`);
  el.setAttribute("preserveAspectRatio", "none");
  grid(el, H);
  if (samples.length > 0) {
    const rx = samples.map((s) => s.rx);
    const tx = samples.map((s) => s.tx);
    const n = samples.length;
    const area = `${x(0, n).toFixed(1)},${H} ${points(rx, max, H)} ${x(n - 1, n).toFixed(1)},${H}`;
    el.append(svg("polygon", { points: area, class: "rx-area" }));
    el.append(svg("polyline", { points: points(rx, max, H), class: "rx-line", "vector-effect": "non-scaling-stroke" }));
    el.append(svg("polyline", { points: points(tx, max, H), class: "tx-line", "vector-effect": "non-scaling-stroke" }));
  }
  el.setAttribute("data-points", String(samples.length));
  el.setAttribute("data-last-rx", samples.length ? String(samples[samples.length - 1].rx) : "");
  el.setAttribute("data-last-tx", samples.length ? String(samples[samples.length - 1].tx) : "");
  el.setAttribute("data-max", String(max));
  return max;
}

const RH = 60;

/** Redraws the round-trip chart; returns its scale's top (ms). */
export function drawRtt(el: SVGElement, samples: Sample[]): number {
  const measured = samples.filter((s) => s.rtt !== null);
  const max = niceCeil(Math.max(10, ...measured.map((s) => s.rtt as number)));
  el.replaceChildren();
  el.setAttribute("viewBox", `0 0 ${W} ${RH}`);
  el.setAttribute("preserveAspectRatio", "none");
  grid(el, RH);
  // Unmeasured seconds break the line rather than draw a zero.
  const n = samples.length;
  let run: string[] = [];
  const flush = () => {
    if (run.length > 0) {
      el.append(svg("polyline", { points: run.join(" "), class: "rtt-line", "vector-effect": "non-scaling-stroke" }));
    }
    run = [];
  };
  samples.forEach((s, i) => {
    if (s.rtt === null) {
      flush();
      return;
    }
    run.push(`${x(i, n).toFixed(1)},${(RH - (RH * Math.min(s.rtt, max)) / max).toFixed(1)}`);
  });
  flush();
  el.setAttribute("data-points", String(measured.length));
  const last = [...samples].reverse().find((s) => s.rtt !== null);
  el.setAttribute("data-last-rtt", last ? String(last.rtt) : "");
  return max;
}
