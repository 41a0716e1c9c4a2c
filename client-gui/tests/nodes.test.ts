import { afterEach, describe, expect, test } from "vitest";
import { Backend, NODES, setValue, start, stop, visible } from "./harness";

afterEach(stop);

const ids = (ui: Awaited<ReturnType<typeof start>>) => ui.$$("#nodes-table .node").map((r) => r.getAttribute("data-id"));

async function nodesUi(b = new Backend()) {
  const ui = await start(b);
  await ui.click("#tab-nodes");
  return ui;
}

describe("nodes screen", () => {
  test("lists the DHT's nodes, cheapest first", async () => {
    const b = new Backend();
    const ui = await nodesUi(b);
    expect(b.called("nodes").map((c) => c.args)).toContainEqual({ role: null, country: null });
    expect(ids(ui)).toEqual(["relay-se", "exit-de-cheap", "relay-de", "exit-nl", "exit-us-dear"]);
    expect(ui.text("#nodes-count")).toBe("5 of 5 nodes");
    const row = ui.$('#nodes-table .node[data-id="exit-de-cheap"]');
    expect(row.textContent).toContain("1,000,000 units/GiB");
    expect(row.textContent).toContain("exit, relay");
    expect(row.textContent).toContain("80 ms");
    expect(row.textContent).toContain("2 min 00 s ago");
  });

  test("filter by role", async () => {
    const ui = await nodesUi();
    setValue(ui.$("#nodes-role"), "exit");
    expect(ids(ui)).toEqual(["exit-de-cheap", "exit-nl", "exit-us-dear"]);
    setValue(ui.$("#nodes-role"), "relay");
    expect(ids(ui)).toEqual(["relay-se", "exit-de-cheap", "relay-de"]);
    expect(ui.text("#nodes-count")).toBe("3 of 5 nodes");
  });

  test("filter by country, with role", async () => {
    const ui = await nodesUi();
    const country = ui.$("#nodes-country") as HTMLSelectElement;
    expect([...country.options].map((o) => o.value)).toEqual(["", "DE", "NL", "SE", "US"]);
    setValue(country, "DE");
    expect(ids(ui)).toEqual(["exit-de-cheap", "relay-de"]);
    setValue(ui.$("#nodes-role"), "exit");
    expect(ids(ui)).toEqual(["exit-de-cheap"]);
    setValue(country, "SE");
    expect(ids(ui)).toEqual([]);
    expect(visible(ui.$("#nodes-empty"))).toBe(true);
    expect(ui.text("#nodes-empty")).toBe("No node matches these filters.");
  });

  test("sort by round trip (unmeasured last) with the select", async () => {
    const ui = await nodesUi();
    setValue(ui.$("#nodes-sort"), "rtt");
    expect(ids(ui)).toEqual(["relay-de", "exit-us-dear", "exit-nl", "exit-de-cheap", "relay-se"]);
    expect(ui.$("#nodes-table").getAttribute("data-sort")).toBe("rtt");
  });

  test("sort by clicking the column headers; a second click reverses", async () => {
    const ui = await nodesUi();
    await ui.click('#nodes-table th[data-sort="rtt"]');
    expect(ids(ui)).toEqual(["relay-de", "exit-us-dear", "exit-nl", "exit-de-cheap", "relay-se"]);
    expect(ui.$('#nodes-table th[data-sort="rtt"]').getAttribute("aria-sort")).toBe("ascending");
    expect((ui.$("#nodes-sort") as HTMLSelectElement).value).toBe("rtt");
    await ui.click('#nodes-table th[data-sort="rtt"]');
    expect(ids(ui)).toEqual(["exit-de-cheap", "exit-nl", "exit-us-dear", "relay-de", "relay-se"]);
    expect(ui.$("#nodes-table").getAttribute("data-dir")).toBe("desc");
    await ui.click('#nodes-table th[data-sort="price"]');
    expect(ids(ui)).toEqual(["relay-se", "exit-de-cheap", "relay-de", "exit-nl", "exit-us-dear"]);
    await ui.click('#nodes-table th[data-sort="price"]');
    expect(ids(ui)).toEqual(["exit-us-dear", "exit-nl", "relay-de", "exit-de-cheap", "relay-se"]);
  });

  test("an empty DHT says so", async () => {
    const b = new Backend();
    b.nodes = [];
    const ui = await nodesUi(b);
    expect(ui.text("#nodes-empty")).toBe("The DHT knows no nodes yet.");
    expect(ui.text("#nodes-count")).toBe("0 of 0 nodes");
  });

  test("refresh asks again; an error is shown", async () => {
    const b = new Backend();
    const ui = await nodesUi(b);
    const before = b.called("nodes").length;
    b.reject("nodes", { kind: "internal", message: "DHT lookup failed" });
    await ui.click("#nodes-refresh");
    expect(b.called("nodes").length).toBe(before + 1);
    expect(ui.text("#nodes-error")).toContain("DHT lookup failed");
    // The list read before stays.
    expect(ids(ui)).toHaveLength(NODES.length);
  });
});
