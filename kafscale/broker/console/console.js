/* KafScale web console: a read-only view of the whole cluster over the broker's /api.
 *
 * No build step and no library: plain DOM and SVG. Everything the API answers is inserted as
 * text (el() appends text nodes; nothing is ever assigned to innerHTML): topic and group names,
 * client ids and hosts are anyone's input. Links are built here from "#/" and
 * encodeURIComponent. Pages are hash routes (#/cluster, #/topics, #/topics/NAME, #/groups,
 * #/groups/NAME, #/charts); the shown page is fetched again every few seconds, the charts
 * every second (only the seconds not seen yet).
 */
"use strict";
(() => {
  const REFRESH_MS = 5000;
  const CHART_MS = 1000;
  const WINDOW_S = 300; // the brokers keep 300 one-second samples (/api/rates)
  const COLORS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#db2777", "#0891b2", "#65a30d"];
  const SVG = "http://www.w3.org/2000/svg";

  // --- DOM helpers ---------------------------------------------------------------------------

  /** An element with attributes and children (strings become text nodes, null is skipped). */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    setAttrs(node, attrs);
    add(node, children);
    return node;
  }

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(SVG, tag);
    setAttrs(node, attrs);
    add(node, children);
    return node;
  }

  function setAttrs(node, attrs) {
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v !== null && v !== undefined && v !== false) node.setAttribute(k, String(v));
    }
  }

  function add(node, children) {
    for (const c of children.flat(Infinity)) {
      if (c === null || c === undefined || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
  }

  const link = (page, name, label) =>
    el("a", { href: `#/${page}/${encodeURIComponent(name)}` }, label === undefined ? name : label);

  /** A table: columns [{key, label, num}], rows [{attrs, cells: {key: content}}]. */
  function table(id, columns, rows, empty) {
    if (!rows.length) return el("p", { class: "empty", id }, empty || "none");
    const head = el("tr", null, columns.map((c) => el("th", { class: c.num ? "num" : null }, c.label)));
    const body = rows.map((r) =>
      el(
        "tr",
        r.attrs,
        columns.map((c) => el("td", { "data-col": c.key, class: c.num ? "num" : null }, r.cells[c.key])),
      ),
    );
    return el("table", { id }, el("thead", null, head), el("tbody", null, body));
  }

  const section = (title, ...children) => el("section", null, el("h2", null, title), children);

  /** Summary figures: [[label, value], ...]. */
  const facts = (pairs) =>
    el("dl", { class: "facts" }, pairs.map(([k, v]) => el("div", null, el("dt", null, k), el("dd", null, v))));

  function badge(text, kind) {
    return el("span", { class: `badge ${kind}` }, text);
  }

  // --- formatting ----------------------------------------------------------------------------

  const num = (n) => (n === null || n === undefined ? "–" : Number(n).toLocaleString("en-US"));

  function bytes(n) {
    if (n === null || n === undefined) return "–";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (Math.abs(n) >= 1024 && i < units.length - 1) {
      n /= 1024;
      i++;
    }
    return `${i ? n.toFixed(n < 10 ? 2 : 1) : Math.round(n)} ${units[i]}`;
  }

  function short(n) {
    const a = Math.abs(n);
    if (a >= 1e9) return `${+(n / 1e9).toFixed(1)}G`;
    if (a >= 1e6) return `${+(n / 1e6).toFixed(1)}M`;
    if (a >= 1e3) return `${+(n / 1e3).toFixed(1)}k`;
    return `${+n.toFixed(a < 10 ? 2 : 0)}`;
  }

  const clock = (ms) => new Date(ms).toLocaleTimeString("en-GB");
  /** Local date and time as 2025-01-31 13:45:07 (no locale's day/month order to guess). */
  function stamp(ms) {
    const d = new Date(ms);
    const two = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${two(d.getMonth() + 1)}-${two(d.getDate())} ${clock(ms)}`;
  }
  const brokerName = (id) => (id === null || id === undefined ? "none" : `broker ${id}`);
  const color = (id) => COLORS[((id % COLORS.length) + COLORS.length) % COLORS.length];

  function stateBadge(state) {
    const kind = { Stable: "ok", Empty: "idle", Dead: "bad", unknown: "bad" }[state] || "warn";
    return badge(state, kind);
  }

  function readyBadge(b) {
    if (b.ready === true) return badge("ready", "ok");
    if (b.ready === false) return badge("not ready", "bad");
    return badge("unknown", "idle");
  }

  // --- the API -------------------------------------------------------------------------------

  async function api(path) {
    const response = await fetch(path, { cache: "no-store", headers: { Accept: "application/json" } });
    let body = null;
    try {
      body = await response.json();
    } catch (_) {
      /* not JSON: reported below */
    }
    if (!response.ok || body === null) {
      throw new Error(`${path}: ${(body && body.error) || `HTTP ${response.status}`}`);
    }
    return body;
  }

  // --- pages ---------------------------------------------------------------------------------

  async function clusterPage() {
    const c = await api("/api/cluster");
    const ready = c.brokers.filter((b) => b.ready).length;
    const topics = Object.keys(c.owners);
    const partitions = topics.reduce((n, t) => n + c.owners[t].length, 0);
    const brokers = table(
      "brokers",
      [
        { key: "id", label: "Broker" },
        { key: "address", label: "Kafka address" },
        { key: "http", label: "HTTP" },
        { key: "ready", label: "Readiness" },
        { key: "object_store", label: "Object store" },
        { key: "partitions", label: "Partitions owned", num: true },
        { key: "groups", label: "Groups coordinated", num: true },
        { key: "notes", label: "" },
      ],
      c.brokers.map((b) => ({
        attrs: { "data-broker": b.id },
        cells: {
          id: el("span", null, el("span", { class: `dot c${b.id % COLORS.length}` }), ` ${b.id}`),
          address: `${b.host}:${b.port}`,
          http: b.http || "–",
          ready: [readyBadge(b), b.reason ? el("div", { class: "reason" }, b.reason) : null],
          object_store: b.object_store || "–",
          partitions: num(b.partitions),
          groups: num(b.groups),
          notes: [b.this ? badge("this page", "idle") : null, b.id === c.janitor ? badge("janitor", "idle") : null],
        },
      })),
      "no live broker",
    );
    const ids = c.brokers.map((b) => b.id);
    const ownership = table(
      "ownership",
      [
        { key: "topic", label: "Topic" },
        { key: "partitions", label: "Partitions", num: true },
        ...ids.map((id) => ({ key: `b${id}`, label: brokerName(id) })),
        { key: "unowned", label: "Unowned", num: true },
      ],
      topics.map((t) => {
        const row = c.owners[t];
        const cells = { topic: link("topics", t), partitions: num(row.length), unowned: num(row.filter((o) => o === null).length) };
        for (const id of ids) cells[`b${id}`] = owned(row, id);
        return { attrs: { "data-topic": t }, cells };
      }),
      "no topics",
    );
    return el(
      "div",
      null,
      facts([
        ["Cluster id", c.cluster_id],
        ["Brokers ready", `${ready} / ${c.brokers.length}`],
        ["Topics", num(topics.length)],
        ["Partitions", num(partitions)],
        ["Unowned partitions", num(c.unowned_partitions)],
      ]),
      section("Brokers", brokers),
      section("Who owns what", el("p", { class: "hint" }, "Partitions of each topic by owning broker (the partition's leader)."), ownership),
    );
  }

  /** The partitions of an owner row that broker ``id`` owns: "2 (p0, p3)" (ids cut at 12). */
  function owned(row, id) {
    const mine = [];
    row.forEach((o, p) => {
      if (o === id) mine.push(p);
    });
    if (!mine.length) return el("span", { class: "muted" }, "–");
    const shown = mine.slice(0, 12).join(", ") + (mine.length > 12 ? ", …" : "");
    return [`${mine.length} `, el("span", { class: "muted" }, `(${shown})`)];
  }

  let showInternal = false;

  async function topicsPage() {
    const { topics } = await api("/api/topics");
    const shown = topics.filter((t) => showInternal || !t.internal);
    const toggle = el("input", { type: "checkbox", id: "show-internal", checked: showInternal });
    toggle.addEventListener("change", () => {
      showInternal = toggle.checked;
      refresh();
    });
    return el(
      "div",
      null,
      el("label", { class: "toggle" }, toggle, ` show internal topics (${topics.length - topics.filter((t) => !t.internal).length})`),
      table(
        "topics",
        [
          { key: "name", label: "Topic" },
          { key: "partitions", label: "Partitions", num: true },
          { key: "leaders", label: "Leaders" },
          { key: "records", label: "Records", num: true },
          { key: "size", label: "Size", num: true },
          { key: "configs", label: "Configs set" },
        ],
        shown.map((t) => ({
          attrs: { "data-topic": t.name },
          cells: {
            name: [link("topics", t.name), t.internal ? badge("internal", "idle") : null],
            partitions: num(t.partitions.length),
            leaders: leaders(t.partitions),
            records: num(t.records),
            size: bytes(t.size_bytes),
            configs: Object.keys(t.configs).length ? Object.keys(t.configs).join(", ") : el("span", { class: "muted" }, "defaults"),
          },
        })),
        "no topics",
      ),
    );
  }

  /** "broker 0 × 2, broker 1 × 1" for a topic's partitions. */
  function leaders(partitions) {
    const count = new Map();
    for (const p of partitions) count.set(p.leader, (count.get(p.leader) || 0) + 1);
    const ids = [...count.keys()].sort((a, b) => (a === null) - (b === null) || a - b);
    return ids.map((id, i) => [i ? ", " : "", `${brokerName(id)} × ${count.get(id)}`]);
  }

  async function topicPage(name) {
    const t = await api(`/api/topics/${encodeURIComponent(name)}`);
    const configs = Object.entries(t.configs);
    return el(
      "div",
      null,
      el("h1", null, "Topic ", el("span", { class: "name", id: "topic-name" }, t.name)),
      facts([
        ["Partitions", num(t.partitions.length)],
        ["Records", num(t.records)],
        ["Size", bytes(t.size_bytes)],
        ["Topic id", t.id],
        ["Internal", t.internal ? "yes" : "no"],
      ]),
      section(
        "Partitions",
        table(
          "partitions",
          [
            { key: "partition", label: "Partition", num: true },
            { key: "leader", label: "Leader" },
            { key: "epoch", label: "Leader epoch", num: true },
            { key: "log_start", label: "Log start offset", num: true },
            { key: "hw", label: "High watermark", num: true },
            { key: "records", label: "Records", num: true },
            { key: "size", label: "Size", num: true },
          ],
          t.partitions.map((p) => ({
            attrs: { "data-partition": p.partition },
            cells: {
              partition: String(p.partition),
              leader: p.leader === null ? badge("none", "bad") : brokerName(p.leader),
              epoch: num(p.leader_epoch),
              log_start: num(p.log_start_offset),
              hw: num(p.high_watermark),
              records: num(p.high_watermark - p.log_start_offset),
              size: bytes(p.size_bytes),
            },
          })),
        ),
      ),
      section(
        "Configs",
        el("p", { class: "hint" }, "Set on the topic; every other config has its default."),
        table(
          "configs",
          [
            { key: "key", label: "Config" },
            { key: "value", label: "Value" },
          ],
          configs.map(([k, v]) => ({ attrs: { "data-config": k }, cells: { key: k, value: v === null ? "null" : String(v) } })),
          "none set: all defaults",
        ),
      ),
    );
  }

  async function groupsPage() {
    const { groups } = await api("/api/groups");
    return table(
      "groups",
      [
        { key: "group", label: "Group" },
        { key: "state", label: "State" },
        { key: "coordinator", label: "Coordinator" },
        { key: "protocol", label: "Protocol" },
        { key: "members", label: "Members", num: true },
        { key: "topics", label: "Topics" },
        { key: "lag", label: "Lag", num: true },
      ],
      groups.map((g) => ({
        attrs: { "data-group": g.group },
        cells: {
          group: link("groups", g.group),
          state: [stateBadge(g.state), g.error ? el("div", { class: "reason" }, g.error) : null],
          coordinator: brokerName(g.coordinator),
          protocol: [g.protocol_type, g.protocol ? ` / ${g.protocol}` : ""],
          members: num(g.members.length),
          topics: [...new Set(g.partitions.map((p) => p.topic))].join(", "),
          lag: num(g.lag),
        },
      })),
      "no consumer groups",
    );
  }

  async function groupPage(name) {
    const g = await api(`/api/groups/${encodeURIComponent(name)}`);
    const assigned = new Map(); // "topic\0partition" -> member
    for (const m of g.members) {
      for (const [topic, parts] of Object.entries(m.assignment || {})) {
        for (const p of parts) assigned.set(`${topic}\0${p}`, m);
      }
    }
    return el(
      "div",
      null,
      el("h1", null, "Group ", el("span", { class: "name", id: "group-name" }, g.group)),
      g.error ? el("p", { class: "error" }, g.error) : null,
      facts([
        ["State", el("span", { id: "group-state" }, stateBadge(g.state))],
        ["Coordinator", brokerName(g.coordinator)],
        ["Protocol", `${g.protocol_type || "–"}${g.protocol ? ` / ${g.protocol}` : ""}`],
        ["Members", num(g.members.length)],
        ["Total lag", el("span", { id: "group-lag" }, num(g.lag))],
      ]),
      section(
        "Members",
        table(
          "members",
          [
            { key: "member", label: "Member id" },
            { key: "instance", label: "Instance id" },
            { key: "client", label: "Client id" },
            { key: "host", label: "Host" },
            { key: "assignment", label: "Assignment" },
          ],
          g.members.map((m) => ({
            attrs: { "data-member": m.member_id },
            cells: {
              member: m.member_id,
              instance: m.group_instance_id || "–",
              client: m.client_id,
              host: m.client_host,
              assignment: m.assignment
                ? Object.entries(m.assignment).map(([t, ps], i) => [i ? "; " : "", `${t}: ${ps.join(", ")}`])
                : el("span", { class: "muted" }, "not a consumer assignment"),
            },
          })),
          "no members",
        ),
      ),
      section(
        "Lag by partition",
        el("p", { class: "hint" }, "Lag = high watermark − committed offset."),
        table(
          "group-partitions",
          [
            { key: "topic", label: "Topic" },
            { key: "partition", label: "Partition", num: true },
            { key: "committed", label: "Committed offset", num: true },
            { key: "hw", label: "High watermark", num: true },
            { key: "lag", label: "Lag", num: true },
            { key: "member", label: "Member" },
            { key: "when", label: "Committed at" },
          ],
          g.partitions.map((p) => {
            const m = assigned.get(`${p.topic}\0${p.partition}`);
            return {
              attrs: { "data-topic": p.topic, "data-partition": p.partition },
              cells: {
                topic: link("topics", p.topic),
                partition: String(p.partition),
                committed: num(p.committed_offset),
                hw: num(p.high_watermark),
                lag: num(p.lag),
                member: m ? `${m.client_id} (${m.client_host})` : "–",
                when: p.commit_ms > 0 ? stamp(p.commit_ms) : "–",
              },
            };
          }),
          "no committed offsets",
        ),
      ),
    );
  }

  // --- charts --------------------------------------------------------------------------------

  const rates = new Map(); // broker id -> samples (oldest first), the last WINDOW_S seconds
  let ratesPolled = 0; // when the last poll that every broker answered was (0: none yet)

  async function pollRates() {
    // The first poll takes everything the brokers keep, later ones the seconds since the
    // previous poll (and some overlap: samples already held are skipped by their time). After
    // a broker did not answer, everything again: its history is not lost.
    const since = ratesPolled ? Math.ceil((Date.now() - ratesPolled) / 1000) + 2 : WINDOW_S;
    const answer = await api(`/api/cluster/rates?seconds=${Math.min(since, WINDOW_S)}`);
    const polled = Date.now();
    const errors = [];
    const live = new Set();
    for (const b of answer.brokers) {
      live.add(b.broker_id);
      if (b.error) errors.push(`${brokerName(b.broker_id)}: ${b.error}`);
      const held = rates.get(b.broker_id) || [];
      const last = held.length ? held[held.length - 1].t : -Infinity;
      for (const s of b.samples) if (s.t > last) held.push(s);
      const from = Date.now() / 1000 - WINDOW_S;
      while (held.length && held[0].t < from) held.shift();
      rates.set(b.broker_id, held);
    }
    for (const id of [...rates.keys()]) if (!live.has(id)) rates.delete(id);
    ratesPolled = errors.length ? 0 : polled;
    return errors;
  }

  async function chartsPage() {
    const errors = await pollRates();
    const ids = [...rates.keys()].sort((a, b) => a - b);
    const series = (field, scale = 1, onlyFlushes = false) =>
      ids.map((id) => ({
        id,
        points: rates
          .get(id)
          .filter((s) => !onlyFlushes || s.flushes > 0)
          .map((s) => [s.t, s[field] * scale]),
      }));
    return el(
      "div",
      { class: "charts" },
      errors.length ? el("p", { class: "error" }, errors.join("; ")) : null,
      chart("chart-produce-bytes", "Produce", "B/s", series("produce_bytes"), { total: true }),
      chart("chart-fetch-bytes", "Fetch", "B/s", series("fetch_bytes"), { total: true }),
      chart("chart-produce-records", "Produce", "records/s", series("produce_records"), { total: true }),
      chart("chart-fetch-records", "Fetch", "records/s", series("fetch_records"), { total: true }),
      // Flushes happen only in the seconds with something to flush: dots, not a baseline.
      chart("chart-flush-avg", "Flush latency, average per second", "ms", series("flush_avg_s", 1000, true), { dots: true }),
      chart("chart-flush-max", "Flush latency, slowest per second", "ms", series("flush_max_s", 1000, true), { dots: true }),
    );
  }

  /** A line chart of the last WINDOW_S seconds in ``unit``, one line per broker. Options:
   * ``total``, the title shows the brokers' latest values added up; ``dots``, each sample is
   * also a dot (a series with gaps has lone points, which a line does not show) and the legend
   * shows each broker's last one. */
  function chart(id, title, unit, series, { total = false, dots = false } = {}) {
    const fmt = (v) => `${short(v)} ${unit}`;
    const W = 560, H = 190, L = 44, R = 10, T = 10, B = 22;
    const now = Date.now() / 1000;
    const x0 = now - WINDOW_S;
    let max = 0;
    for (const s of series) for (const [, v] of s.points) max = Math.max(max, v);
    // Grid lines at a round step, 3 to 4 of them above zero (so labels stay round numbers).
    const step = max > 0 ? niceCeil(max / 4) : 0.25;
    const steps = max > 0 ? Math.max(1, Math.ceil(max / step - 1e-9)) : 4;
    const top = step * steps;
    const x = (t) => L + ((t - x0) / WINDOW_S) * (W - L - R);
    const y = (v) => T + (1 - v / top) * (H - T - B);
    const grid = [];
    for (let i = 0; i <= steps; i++) {
      const v = step * i;
      grid.push(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }));
      grid.push(svg("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, short(v)));
    }
    for (let m = 0; m <= WINDOW_S / 60; m++) {
      const t = now - m * 60;
      grid.push(svg("text", { x: x(t), y: H - 6, "text-anchor": m === 0 ? "end" : "middle" }, m ? `-${m}m` : "now"));
    }
    const lines = series.map((s) => svg("path", { d: pathOf(s.points, x, y), stroke: color(s.id), class: "line" }));
    const marks = dots
      ? series.map((s) => s.points.map(([t, v]) => svg("circle", { cx: x(t).toFixed(1), cy: y(v).toFixed(1), r: 2.2, fill: color(s.id) })))
      : [];
    const latest = series.map((s) => (s.points.length ? s.points[s.points.length - 1][1] : null));
    const sum = latest.reduce((a, b) => a + (b || 0), 0);
    const shown = (v) => (v === null ? "–" : `${dots ? "last " : ""}${fmt(v)}`);
    return el(
      "figure",
      { id, class: "chart" },
      el("figcaption", null, `${title} (${unit})`, total ? el("span", { class: "muted" }, ` — now ${fmt(sum)} in all`) : null),
      svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": title }, grid, lines, marks),
      el(
        "div",
        { class: "legend" },
        series.map((s, i) =>
          el("span", null, el("span", { class: `dot c${s.id % COLORS.length}` }), ` ${brokerName(s.id)}: ${shown(latest[i])}`),
        ),
      ),
    );
  }

  /** An SVG path through the points, broken where a second or more is missing. */
  function pathOf(points, x, y) {
    let d = "";
    let prev = null;
    for (const [t, v] of points) {
      d += `${prev === null || t - prev > 1.5 ? "M" : "L"}${x(t).toFixed(1)},${y(v).toFixed(1)}`;
      prev = t;
    }
    return d || "M0,0";
  }

  /** The smallest of 1, 2, 2.5, 5 times a power of ten that is at least ``v`` (> 0). */
  function niceCeil(v) {
    const p = 10 ** Math.floor(Math.log10(v));
    for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  }

  // --- routing -------------------------------------------------------------------------------

  const PAGES = {
    cluster: { title: "Cluster", render: clusterPage },
    topics: { title: "Topics", render: topicsPage, detail: topicPage },
    groups: { title: "Consumer groups", render: groupsPage, detail: groupPage },
    charts: { title: "Charts", render: chartsPage, every: CHART_MS },
  };

  function route() {
    const parts = location.hash.replace(/^#\/?/, "").split("/");
    const page = PAGES[parts[0]] ? parts[0] : "cluster";
    let arg = null;
    if (parts.length > 1 && parts[1] !== "") {
      try {
        arg = decodeURIComponent(parts.slice(1).join("/"));
      } catch (_) {
        arg = parts.slice(1).join("/");
      }
    }
    return { page, arg };
  }

  const view = document.getElementById("view");
  const status = document.getElementById("status");
  let generation = 0;
  let timer = null;

  /** Render the current route now (and again every few seconds). */
  async function refresh() {
    const mine = ++generation;
    clearTimeout(timer);
    const { page, arg } = route();
    const spec = PAGES[page];
    for (const a of document.querySelectorAll("nav a")) {
      a.classList.toggle("active", a.getAttribute("data-page") === page);
    }
    document.title = `${arg === null ? spec.title : arg} · KafScale console`;
    if (!document.hidden || !view.firstChild) {
      try {
        const node = await (arg === null ? spec.render() : (spec.detail || spec.render)(arg));
        if (mine !== generation) return;
        view.replaceChildren(node);
        view.setAttribute("data-page", page);
        status.className = "status ok";
        status.textContent = `updated ${clock(Date.now())}`;
      } catch (e) {
        if (mine !== generation) return;
        status.className = "status bad";
        status.textContent = String(e.message || e);
        if (!view.firstChild || view.getAttribute("data-page") !== page) {
          view.replaceChildren(el("p", { class: "error" }, String(e.message || e)));
          view.setAttribute("data-page", page);
        }
      }
    }
    if (mine === generation) timer = setTimeout(refresh, spec.every || REFRESH_MS);
  }

  window.addEventListener("hashchange", () => {
    view.replaceChildren();
    refresh();
  });
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) refresh();
  });
  api("/healthz")
    .then((h) => {
      document.getElementById("served-by").textContent = brokerName(h.broker_id);
    })
    .catch(() => {});
  refresh();
})();
