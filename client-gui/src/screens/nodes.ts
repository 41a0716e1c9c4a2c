// Nodes: the DHT's node list, filtered by role and country and sorted by
// price or round trip.

import type { NodeInfo } from "../api";
import type { Ctx, Screen } from "../ctx";
import { h, show, text } from "../dom";
import { elapsed, millis, pricePerGib, shortId } from "../format";
import type { Model } from "../store";

export type SortKey = "price" | "rtt" | "region" | "capacity";

export interface NodeView {
  role: "" | "exit" | "relay";
  country: string;
  sort: SortKey;
  /** 1 ascending, -1 descending. */
  dir: 1 | -1;
}

/** The rows the table shows for a view. */
export function viewNodes(nodes: NodeInfo[], v: NodeView): NodeInfo[] {
  const rows = nodes.filter(
    (n) => (v.role === "" || n.roles.includes(v.role)) && (v.country === "" || n.region.toUpperCase() === v.country),
  );
  const key = (n: NodeInfo): number | string | null => {
    switch (v.sort) {
      case "price":
        return n.price_per_gib;
      case "rtt":
        return n.rtt_ms;
      case "region":
        return n.region;
      case "capacity":
        return n.capacity_mbit;
    }
  };
  return rows.sort((a, b) => {
    const ka = key(a);
    const kb = key(b);
    // Unmeasured round trips go last whichever the direction.
    if (ka === null || kb === null) return ka === kb ? a.id.localeCompare(b.id) : ka === null ? 1 : -1;
    const c = ka < kb ? -1 : ka > kb ? 1 : 0;
    return c !== 0 ? c * v.dir : a.id.localeCompare(b.id);
  });
}

export function nodesScreen(ctx: Ctx): Screen {
  const view: NodeView = { role: "", country: "", sort: "price", dir: 1 };

  const role = h(
    "select",
    { id: "nodes-role", "aria-label": "Role" },
    h("option", { value: "" }, "All roles"),
    h("option", { value: "exit" }, "Exits"),
    h("option", { value: "relay" }, "Relays"),
  );
  const country = h("select", { id: "nodes-country", "aria-label": "Country" }, h("option", { value: "" }, "All countries"));
  const sort = h(
    "select",
    { id: "nodes-sort", "aria-label": "Sort by" },
    h("option", { value: "price" }, "Sort by price"),
    h("option", { value: "rtt" }, "Sort by round trip"),
    h("option", { value: "region" }, "Sort by country"),
    h("option", { value: "capacity" }, "Sort by capacity"),
  );
  const refresh = h("button", { id: "nodes-refresh", type: "button", class: "button subtle" }, "Refresh");
  const count = h("span", { id: "nodes-count", class: "hint" });
  const error = h("div", { id: "nodes-error", class: "notice notice-error", role: "alert", hidden: true });
  const empty = h("p", { id: "nodes-empty", class: "empty", hidden: true });

  const th = (key: SortKey | null, label: string, cls = "") =>
    key
      ? h("th", { class: `sortable ${cls}`, "data-sort": key, tabindex: 0, role: "button", title: `Sort by ${label.toLowerCase()}` }, label)
      : h("th", { class: cls }, label);
  const headRow = h(
    "tr",
    {},
    th(null, "Node"),
    th(null, "Roles"),
    th("region", "Country"),
    th("price", "Price", "num"),
    th("rtt", "Round trip", "num"),
    th("capacity", "Capacity", "num"),
    th(null, "Signed", "num"),
  );
  const body = h("tbody");
  const table = h("table", { id: "nodes-table", class: "table" }, h("thead", {}, headRow), body);

  const el = h(
    "section",
    { id: "screen-nodes", class: "screen nodes", "aria-labelledby": "tab-nodes", hidden: true },
    h("div", { class: "card" }, h("div", { class: "filters" }, role, country, sort, refresh, count), error, h("div", { class: "table-wrap" }, table), empty),
  );

  function changed(): void {
    view.role = role.value as NodeView["role"];
    view.country = country.value;
    drawnKey = "";
    ctx.render();
  }
  role.addEventListener("change", changed);
  country.addEventListener("change", changed);
  sort.addEventListener("change", () => {
    view.sort = sort.value as SortKey;
    view.dir = 1;
    changed();
  });
  const clickSort = (cell: HTMLElement) => {
    const key = cell.getAttribute("data-sort") as SortKey;
    if (view.sort === key) view.dir = view.dir === 1 ? -1 : 1;
    else {
      view.sort = key;
      view.dir = 1;
    }
    sort.value = key;
    changed();
  };
  for (const cell of headRow.querySelectorAll<HTMLElement>("th[data-sort]")) {
    cell.addEventListener("click", () => clickSort(cell));
    cell.addEventListener("keydown", (e) => {
      if (e.key === "Enter" || e.key === " ") {
        e.preventDefault();
        clickSort(cell);
      }
    });
  }
  refresh.addEventListener("click", () => void ctx.loadNodes());

  let drawnNodes: NodeInfo[] | null | undefined;
  let drawnKey = "";

  function render(m: Model): void {
    show(error, m.nodesError !== null);
    if (m.nodesError) text(error, `The node list could not be read: ${m.nodesError.message}`);
    const key = `${view.role}|${view.country}|${view.sort}|${view.dir}`;
    if (m.nodes === drawnNodes && key === drawnKey) return;
    drawnNodes = m.nodes;
    drawnKey = key;

    const all = m.nodes ?? [];
    const regions = [...new Set(all.map((n) => n.region.toUpperCase()).filter((r) => r))].sort();
    if (view.country && !regions.includes(view.country)) regions.push(view.country);
    const have = [...country.options].map((o) => o.value).join(",");
    if (["", ...regions].join(",") !== have) {
      country.replaceChildren(h("option", { value: "" }, "All countries"), ...regions.map((r) => h("option", { value: r }, r)));
      country.value = view.country;
    }

    for (const cell of headRow.querySelectorAll<HTMLElement>("th[data-sort]")) {
      const on = cell.getAttribute("data-sort") === view.sort;
      cell.setAttribute("aria-sort", on ? (view.dir === 1 ? "ascending" : "descending") : "none");
      cell.classList.toggle("sorted", on);
    }
    table.setAttribute("data-sort", view.sort);
    table.setAttribute("data-dir", view.dir === 1 ? "asc" : "desc");

    const rows = viewNodes(all, view);
    body.replaceChildren(
      ...rows.map((n) =>
        h(
          "tr",
          {
            class: "node",
            "data-id": n.id,
            "data-region": n.region,
            "data-roles": n.roles.join(" "),
            "data-price": n.price_per_gib,
            "data-rtt": n.rtt_ms ?? "",
          },
          h("td", { class: "mono", title: `${n.id} at ${n.addr}` }, shortId(n.id)),
          h("td", {}, n.roles.join(", ")),
          h("td", {}, n.region || "—"),
          h("td", { class: "num" }, pricePerGib(n.price_per_gib)),
          h("td", { class: "num" }, n.rtt_ms !== null ? millis(n.rtt_ms) : "—"),
          h("td", { class: "num" }, `${n.capacity_mbit} Mbit/s`),
          h("td", { class: "num" }, `${elapsed(n.age_s)} ago`),
        ),
      ),
    );
    text(count, m.nodes === null ? "Loading…" : `${rows.length} of ${all.length} nodes`);
    show(table, rows.length > 0);
    show(empty, m.nodes !== null && rows.length === 0);
    text(empty, all.length === 0 ? "The DHT knows no nodes yet." : "No node matches these filters.");
  }

  return { el, render };
}
