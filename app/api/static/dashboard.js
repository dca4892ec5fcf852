/* wagon-detector dashboard: a facility list and a facility view, reading the public API (v1) of this service.
 * Charts: uPlot (vendored, MIT). No other dependency, nothing loaded from another origin.
 * Sign-in for browsers that cannot send a header: /dashboard?api_key=KEY once; the key is kept in sessionStorage,
 * sent as "Authorization: Bearer KEY", and removed from the address bar (never put in a URL the page makes). */
(function () {
  "use strict";

  const KEY_STORE = "wagon.api_key";
  const CLASSES = ["railcar", "container"];
  const LABELS = { railcar: "Railcars", container: "Containers" };
  const C = { blue: "#0072B2", orange: "#E69F00", sky: "rgba(86,180,233,0.28)", skyLine: "#56B4E9",
              vermillion: "#D55E00", black: "#000000" };
  const DEFAULT_THRESHOLD = 3.0;
  const PAGE = 10000;

  const $ = (id) => document.getElementById(id);
  const state = { facility: null, thresholds: null, series: [], shown: [], charts: [], selected: null, range: null };
  const t0 = performance.now();

  // ---------------------------------------------------------------------------------------------- sign-in, fetch
  (function takeKeyFromUrl() {
    const url = new URL(window.location.href);
    if (url.searchParams.has("api_key")) {
      const key = url.searchParams.get("api_key");
      if (key) sessionStorage.setItem(KEY_STORE, key);
      url.searchParams.delete("api_key");
      history.replaceState(history.state, "", url.pathname + url.search + url.hash);
    }
  })();

  function authHeaders() {
    const key = sessionStorage.getItem(KEY_STORE);
    return key ? { Authorization: "Bearer " + key } : {};
  }

  async function api(path, as) {
    const r = await fetch(path, { headers: authHeaders(), credentials: "same-origin" });
    if (r.status === 401 || r.status === 403) {
      throw new Error("Not signed in: open this page once as /dashboard?api_key=YOUR_KEY");
    }
    if (!r.ok) {
      let detail = r.statusText;
      try { detail = (await r.json()).detail || detail; } catch (e) { /* not JSON */ }
      throw new Error(path.split("?")[0] + ": " + r.status + " " + detail);
    }
    if (as === "blob") return r.blob();
    if (as === "text") return r.text();
    return r.json();
  }

  // Every item of a paged list (`{<key>: [...], next_cursor}`), following next_cursor to the end.
  async function allPages(path, key, params) {
    let cursor = null;
    const out = [];
    do {
      const q = new URLSearchParams(Object.assign({ limit: String(PAGE) }, params || {}));
      if (cursor) q.set("cursor", cursor);
      const page = await api(path + "?" + q);
      out.push(...page[key]);
      cursor = page.next_cursor;
    } while (cursor);
    return out;
  }

  function allObservations(fid, params) {
    return allPages(`/v1/facilities/${encodeURIComponent(fid)}/observations`, "observations", params);
  }

  // ---------------------------------------------------------------------------------------------- helpers
  function esc(s) {
    return String(s == null ? "" : s).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;",
      '"': "&quot;", "'": "&#39;" }[c]));
  }
  function fmtTime(iso) { return iso ? iso.replace("T", " ").replace(/(:\d\d)(\.\d+)?Z$/, "$1").slice(0, 16) : "–"; }
  function fmtNum(v, d) { return v == null ? "–" : Number(v).toFixed(d == null ? 1 : d); }
  function fmtCount(v) { return v == null ? "–" : String(v); }
  function status(msg, isError) {
    const el = $("status");
    el.textContent = msg || "";
    el.style.color = isError ? C.vermillion : "";
  }
  function thresholdsOf(t) {
    return { score: t ? t.score : DEFAULT_THRESHOLD, drop: t ? t.drop_score : DEFAULT_THRESHOLD };
  }
  /** "surge", "drop" or null: whether this class's score crosses the facility's thresholds. */
  function crossing(block, thr) {
    if (!block) return null;
    if (thr.score != null && block.score != null && block.score >= thr.score) return "surge";
    if (thr.drop != null && block.drop_score != null && block.drop_score >= thr.drop) return "drop";
    return null;
  }
  function worstScore(obs) {
    let worst = null;
    for (const c of CLASSES) {
      const b = obs && obs.anomaly && obs.anomaly[c];
      if (b) for (const s of [b.score, b.drop_score]) if (s != null && (worst == null || s > worst)) worst = s;
    }
    return worst;
  }
  function markReady(view, extra) {
    const ms = Math.round(performance.now());
    document.body.dataset.ready = view;
    document.body.dataset.loadMs = String(ms);
    $("timing").textContent = `${view} ready ${ms} ms after navigation` + (extra ? ` (${extra})` : "");
  }

  // ---------------------------------------------------------------------------------------------- routing
  function currentFacility() { return new URL(window.location.href).searchParams.get("facility"); }
  function go(fid, push) {
    const url = fid ? "/dashboard?facility=" + encodeURIComponent(fid) : "/dashboard";
    if (push) history.pushState({ facility: fid }, "", url);
    route();
  }
  function route() {
    const fid = currentFacility();
    document.body.dataset.ready = "";
    (fid ? showFacility(fid) : showList()).catch((e) => { status(e.message, true); document.body.dataset.ready = "error"; });
  }
  window.addEventListener("popstate", route);
  document.addEventListener("click", (ev) => {
    const a = ev.target.closest && ev.target.closest("a[data-facility], a#home, a#back");
    if (!a || ev.ctrlKey || ev.metaKey || ev.shiftKey || ev.button !== 0) return;
    ev.preventDefault();
    go(a.dataset.facility || null, true);
  });

  // ---------------------------------------------------------------------------------------------- list view
  async function showList() {
    $("facility-view").hidden = true;
    $("list-view").hidden = false;
    document.title = "Facilities · wagon-detector";
    status("Loading facilities…");
    const facilities = await allPages("/v1/facilities", "facilities");
    const rows = await Promise.all(facilities.map(async (f) => {
      const fid = encodeURIComponent(f.id);
      const [latest, thr] = await Promise.all([
        api(`/v1/facilities/${fid}/observations?order=desc&limit=1`),
        api(`/v1/facilities/${fid}/alerts`).catch(() => null),
      ]);
      const obs = latest.observations[0] || null;
      const t = thresholdsOf(thr);
      const crossings = obs ? CLASSES.map((c) => [c, crossing(obs.anomaly[c], t)]).filter((x) => x[1]) : [];
      return { f, obs, crossings, worst: worstScore(obs) };
    }));
    rows.sort((a, b) => (b.crossings.length > 0) - (a.crossings.length > 0)
      || (b.worst == null ? -Infinity : b.worst) - (a.worst == null ? -Infinity : a.worst)
      || a.f.id.localeCompare(b.f.id));
    const body = $("facilities").tBodies[0];
    body.innerHTML = rows.map(({ f, obs, crossings, worst }) => {
      const badge = crossings.map(([c, dir]) =>
        `<span class="badge ${dir}" title="${esc(LABELS[c])} ${dir} crosses the alert threshold">${dir === "drop" ? "▼" : "▲"} ${esc(LABELS[c])}</span>`).join(" ");
      return `<tr data-facility-row="${esc(f.id)}"><th scope="row"><a href="/dashboard?facility=${encodeURIComponent(f.id)}" data-facility="${esc(f.id)}">${esc(f.name)}</a>
        <small>(${esc(f.id)})</small></th><td>${esc(f.kind)}</td><td>${esc(obs ? fmtTime(obs.captured_at) : "no observations")}</td>
        <td class="num">${fmtCount(obs && obs.counts.railcar)}</td><td class="num">${fmtCount(obs && obs.counts.container)}</td>
        <td class="num">${fmtNum(worst)}</td><td>${badge}</td></tr>`;
    }).join("");
    $("no-facilities").hidden = rows.length > 0;
    status(`${rows.length} facilities`);
    markReady("list", `${rows.length} facilities`);
  }

  // ---------------------------------------------------------------------------------------------- facility view
  async function showFacility(fid) {
    $("list-view").hidden = true;
    $("facility-view").hidden = false;
    status("Loading " + fid + "…");
    const enc = encodeURIComponent(fid);
    const [facility, thr, series] = await Promise.all([
      api(`/v1/facilities/${enc}`), api(`/v1/facilities/${enc}/alerts`).catch(() => null), allObservations(fid)]);
    state.facility = facility;
    state.thresholds = thresholdsOf(thr);
    state.series = series;
    state.selected = null;
    document.title = facility.name + " · wagon-detector";
    $("facility-title").textContent = facility.name;
    const thrText = `alert thresholds: surge ${state.thresholds.score == null ? "off" : state.thresholds.score}, ` +
      `drop ${state.thresholds.drop == null ? "off" : state.thresholds.drop}` + (thr && thr.configured ? "" : " (defaults)");
    $("facility-meta").textContent = `${facility.id} · ${facility.kind} · ${series.length} observations · ${thrText}`;
    clearObservation();
    applyRange();
    status("");
    markReady("facility", `${series.length} observations`);
  }

  function rangeBounds() {
    const preset = $("range-preset").value;
    if (preset === "all" || !state.series.length) return [null, null];
    if (preset === "custom") {
      const s = $("range-start").value, e = $("range-end").value;
      return [s ? s + "T00:00:00Z" : null, e ? e + "T23:59:59.999Z" : null];
    }
    const last = Date.parse(state.series[state.series.length - 1].captured_at);
    return [new Date(last - Number(preset) * 86400000).toISOString().replace(".000Z", "Z"), null];
  }

  function applyRange() {
    const [lo, hi] = rangeBounds();
    state.range = [lo, hi];
    const loMs = lo ? Date.parse(lo) : -Infinity, hiMs = hi ? Date.parse(hi) : Infinity;
    state.shown = state.series.filter((o) => { const t = Date.parse(o.captured_at); return t >= loMs && t <= hiMs; });
    $("range-summary").textContent = `${state.shown.length} of ${state.series.length} observations` +
      (state.shown.length ? `, ${fmtTime(state.shown[0].captured_at)} – ${fmtTime(state.shown[state.shown.length - 1].captured_at)} UTC` : "");
    drawCharts();
    drawTable();
  }
  $("range-preset").addEventListener("change", () => { if ($("range-preset").value !== "custom") applyRange(); });
  $("range").addEventListener("submit", (ev) => { ev.preventDefault(); $("range-preset").value = "custom"; applyRange(); });

  // ---------------------------------------------------------------------------------------------- charts
  function drawCharts() {
    for (const ch of state.charts) ch.plot.destroy();
    state.charts = [];
    const box = $("charts");
    box.innerHTML = "";
    for (const cls of CLASSES) {
      const obs = state.shown.filter((o) => o.counts[cls] != null);
      if (!obs.length) continue;
      const xs = [], ys = [], ex = [], lo = [], hi = [], surge = [], drop = [], anomalies = [];
      for (const o of obs) {
        const b = o.anomaly[cls];
        const y = o.counts[cls];
        xs.push(Date.parse(o.captured_at) / 1000);
        ys.push(y);
        ex.push(b && b.expected != null ? b.expected : null);
        lo.push(b && b.expected_lo != null ? b.expected_lo : null);
        hi.push(b && b.expected_hi != null ? b.expected_hi : null);
        const dir = crossing(b, state.thresholds);
        surge.push(dir === "surge" ? y : null);
        drop.push(dir === "drop" ? y : null);
        if (dir) anomalies.push({ o, dir });
      }
      const wrap = document.createElement("section");
      wrap.className = "chart";
      wrap.dataset.class = cls;
      wrap.dataset.points = String(obs.length);
      wrap.dataset.anomalies = String(anomalies.length);
      const title = document.createElement("h3");
      title.id = "chart-title-" + cls;
      title.textContent = `${LABELS[cls]}: ${obs.length} count${obs.length === 1 ? "" : "s"}, ${anomalies.length} ${anomalies.length === 1 ? "anomaly" : "anomalies"}`;
      wrap.appendChild(title);
      const plotBox = document.createElement("div");
      plotBox.className = "plot";
      plotBox.tabIndex = 0;
      plotBox.setAttribute("role", "img");
      plotBox.setAttribute("aria-labelledby", title.id);
      plotBox.setAttribute("aria-describedby", "chart-keys");
      wrap.appendChild(plotBox);
      const list = document.createElement("ul");
      list.className = "anomaly-list";
      list.setAttribute("aria-label", LABELS[cls] + " anomalies");
      list.innerHTML = anomalies.map(({ o, dir }) => {
        const b = o.anomaly[cls];
        return `<li><button type="button" class="${dir}" data-obs="${o.id}">${dir === "drop" ? "▼" : "▲"} ${esc(fmtTime(o.captured_at))}: ` +
          `${o.counts[cls]} (expected ${fmtNum(b.expected)}, ${dir === "drop" ? "drop " : ""}score ${fmtNum(dir === "drop" ? b.drop_score : b.score)})</button></li>`;
      }).join("");
      wrap.appendChild(list);
      box.appendChild(wrap);

      const width = Math.max(320, box.clientWidth || 900);
      const opts = {
        width, height: 220,
        scales: {
          x: { time: true, range: (u, min, max) => { const pad = Math.max((max - min) * 0.02, 43200); return [min - pad, max + pad]; } },
          y: { range: (u, min, max) => [0, Math.max(1, max * 1.1)] },
        },
        legend: { show: false },
        cursor: { points: { size: 9 }, drag: { x: true, y: false } },
        series: [
          {},
          { label: "5 %", stroke: C.skyLine, width: 0, points: { show: false } },
          { label: "95 %", stroke: C.skyLine, width: 0, points: { show: false } },
          { label: "expected", stroke: C.orange, width: 1.5, dash: [6, 4], points: { show: false } },
          { label: "count", stroke: C.blue, width: 1.5, points: { size: 4, fill: C.blue } },
          { label: "surge", stroke: C.vermillion, paths: () => null,
            points: { show: true, size: 13, width: 2, stroke: C.black, fill: C.vermillion } },
          { label: "drop", stroke: C.blue, paths: () => null,
            points: { show: true, size: 13, width: 2, stroke: C.black, fill: C.skyLine } },
        ],
        bands: [{ series: [2, 1], fill: C.sky }],
        axes: [{}, { label: LABELS[cls], size: 60 }],
        hooks: { setCursor: [(u) => tooltip(u, cls, obs)] },
      };
      const plot = new uPlot(opts, [xs, lo, hi, ex, ys, surge, drop], plotBox);
      plot.over.addEventListener("mouseleave", () => { $("tooltip").hidden = true; });
      plot.over.addEventListener("click", () => { if (plot.cursor.idx != null) selectObservation(obs[plot.cursor.idx].id); });
      const chart = { cls, plot, obs, idx: obs.length - 1 };
      plotBox.addEventListener("keydown", (ev) => chartKey(ev, chart));
      plotBox.addEventListener("blur", () => { $("tooltip").hidden = true; });
      state.charts.push(chart);
    }
    if (!$("chart-keys")) {
      const p = document.createElement("p");
      p.id = "chart-keys";
      p.className = "sr-only";
      p.textContent = "Use the left and right arrow keys to move between counts, Enter to open one.";
      document.body.appendChild(p);
    }
  }

  function tooltip(u, cls, obs) {
    const tip = $("tooltip");
    const i = u.cursor.idx;
    if (i == null || u.cursor.left == null || u.cursor.left < 0) { tip.hidden = true; return; }
    const o = obs[i], b = o.anomaly[cls] || {};
    const dir = crossing(b, state.thresholds);
    tip.textContent = `${fmtTime(o.captured_at)} UTC\n${LABELS[cls]}: ${o.counts[cls]}\n` +
      `expected ${fmtNum(b.expected)}  (90 % band ${fmtNum(b.expected_lo, 0)}–${fmtNum(b.expected_hi, 0)})\n` +
      `score ${fmtNum(b.score, 2)}   drop score ${fmtNum(b.drop_score, 2)}` + (dir ? `\nANOMALY (${dir})` : "");
    const rect = u.over.getBoundingClientRect();
    tip.hidden = false;
    tip.style.left = Math.min(window.innerWidth - 260, rect.left + u.cursor.left + 14) + "px";
    tip.style.top = (rect.top + Math.max(0, u.cursor.top) + 14) + "px";
    tip.dataset.obs = String(o.id);
  }

  function chartKey(ev, chart) {
    const n = chart.obs.length;
    if (!n) return;
    if (ev.key === "ArrowLeft" || ev.key === "ArrowRight" || ev.key === "Home" || ev.key === "End") {
      ev.preventDefault();
      if (ev.key === "ArrowLeft") chart.idx = Math.max(0, chart.idx - 1);
      else if (ev.key === "ArrowRight") chart.idx = Math.min(n - 1, chart.idx + 1);
      else chart.idx = ev.key === "Home" ? 0 : n - 1;
      const u = chart.plot;
      u.setCursor({ left: u.valToPos(u.data[0][chart.idx], "x"), top: u.valToPos(u.data[4][chart.idx], "y") });
    } else if (ev.key === "Enter" || ev.key === " ") {
      ev.preventDefault();
      selectObservation(chart.obs[chart.idx].id);
    }
  }

  // ---------------------------------------------------------------------------------------------- table
  function drawTable() {
    const body = $("observations").tBodies[0];
    const rows = [];
    for (let i = state.shown.length - 1; i >= 0; i--) {  // newest first
      const o = state.shown[i];
      const cells = [];
      let flagged = false;
      for (const c of CLASSES) {
        const b = o.anomaly[c];
        const dir = crossing(b, state.thresholds);
        flagged = flagged || !!dir;
        cells.push(`<td class="num">${fmtCount(o.counts[c])}</td><td class="num">${fmtNum(b && b.expected)}</td>` +
          `<td class="num${dir ? " flag" : ""}">${fmtNum(b && b.score, 2)}${dir ? (dir === "drop" ? " ▼" : " ▲") : ""}</td>`);
      }
      rows.push(`<tr tabindex="0" data-obs="${o.id}"${flagged ? ' class="anomalous"' : ""}><td>${esc(fmtTime(o.captured_at))}</td>` +
        `<td>${esc(o.source)}${o.has_image && o.source !== "image" ? " (image)" : ""}</td>${cells.join("")}</tr>`);
    }
    body.innerHTML = rows.join("");
  }
  $("observations").addEventListener("click", (ev) => {
    const tr = ev.target.closest("tr[data-obs]");
    if (tr) selectObservation(Number(tr.dataset.obs));
  });
  $("observations").addEventListener("keydown", (ev) => {
    const tr = ev.target.closest("tr[data-obs]");
    if (!tr) return;
    if (ev.key === "Enter" || ev.key === " ") { ev.preventDefault(); selectObservation(Number(tr.dataset.obs)); }
    else if (ev.key === "ArrowDown" && tr.nextElementSibling) { ev.preventDefault(); tr.nextElementSibling.focus(); }
    else if (ev.key === "ArrowUp" && tr.previousElementSibling) { ev.preventDefault(); tr.previousElementSibling.focus(); }
  });
  $("charts").addEventListener("click", (ev) => {
    const btn = ev.target.closest("button[data-obs]");
    if (btn) selectObservation(Number(btn.dataset.obs));
  });

  // ---------------------------------------------------------------------------------------------- observation
  let overlayUrl = null;
  function clearObservation() {
    $("observation-facts").innerHTML = "";
    $("observation-hint").hidden = false;
    $("overlay-figure").hidden = true;
    if (overlayUrl) { URL.revokeObjectURL(overlayUrl); overlayUrl = null; }
  }

  async function selectObservation(id) {
    const o = state.series.find((x) => x.id === id);
    if (!o) return;
    state.selected = id;
    for (const tr of $("observations").querySelectorAll("tr.selected")) tr.classList.remove("selected");
    const row = $("observations").querySelector(`tr[data-obs="${id}"]`);
    if (row) row.classList.add("selected");
    $("observation-hint").hidden = true;
    const facts = [["Observation", "#" + o.id], ["Captured", fmtTime(o.captured_at) + " UTC"], ["Source", o.source]];
    for (const c of CLASSES) {
      const b = o.anomaly[c];
      const dir = crossing(b, state.thresholds);
      facts.push([LABELS[c], o.counts[c] == null ? "unknown" : `${o.counts[c]}` + (b ? ` · expected ${fmtNum(b.expected)} ` +
        `(90 % ${fmtNum(b.expected_lo, 0)}–${fmtNum(b.expected_hi, 0)}) · score ${fmtNum(b.score, 2)} · drop ${fmtNum(b.drop_score, 2)}` +
        (dir ? ` · ANOMALY (${dir})` : "") + ` · ${b.reason}` : "")]);
    }
    if (o.model) facts.push(["Model", `${o.model.name} ${o.model.version}`]);
    $("observation-facts").innerHTML = facts.map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(v)}</dd>`).join("");
    const fig = $("overlay-figure"), img = $("overlay");
    if (overlayUrl) { URL.revokeObjectURL(overlayUrl); overlayUrl = null; }
    if (!o.has_image) {
      fig.hidden = false;
      img.hidden = true;
      img.removeAttribute("src");
      $("overlay-caption").textContent = "Imported count: no image.";
      return;
    }
    $("overlay-caption").textContent = "Loading image…";
    fig.hidden = false;
    try {
      const blob = await api(`/v1/observations/${id}/overlay.png`, "blob");  // fetched, so the Bearer header is sent
      if (state.selected !== id) return;
      overlayUrl = URL.createObjectURL(blob);
      img.onload = () => { img.dataset.loaded = String(id); };
      img.src = overlayUrl;
      img.hidden = false;
      img.alt = `Image of observation ${id} with ${o.counts.railcar ?? "?"} railcars and ${o.counts.container ?? "?"} containers boxed`;
      $("overlay-caption").textContent = "Detections: railcars and containers boxed per class; legend in the image.";
    } catch (e) {
      img.hidden = true;
      $("overlay-caption").textContent = "No image available (" + e.message + ").";
    }
  }

  // ---------------------------------------------------------------------------------------------- CSV export
  $("export").addEventListener("click", async () => {
    if (!state.facility) return;
    const q = new URLSearchParams({ format: "csv", limit: String(PAGE) });
    const [lo, hi] = state.range || [null, null];
    if (lo) q.set("start", lo);
    if (hi) q.set("end", hi);
    try {
      let text = "", cursor = null, first = true;
      do {  // follow X-Next-Cursor so long series export whole
        if (cursor) q.set("cursor", cursor);
        const r = await fetch(`/v1/facilities/${encodeURIComponent(state.facility.id)}/observations?` + q,
                              { headers: authHeaders() });
        if (!r.ok) throw new Error("export failed: " + r.status);
        const part = await r.text();
        text += first ? part : part.slice(part.indexOf("\n") + 1);
        first = false;
        cursor = r.headers.get("X-Next-Cursor");
      } while (cursor);
      const a = document.createElement("a");
      a.href = URL.createObjectURL(new Blob([text], { type: "text/csv" }));
      a.download = `${state.facility.id}-observations.csv`;
      document.body.appendChild(a);
      a.click();
      setTimeout(() => { URL.revokeObjectURL(a.href); a.remove(); }, 1000);
      status("Exported " + a.download);
    } catch (e) { status(e.message, true); }
  });

  window.addEventListener("resize", () => {
    for (const ch of state.charts) ch.plot.setSize({ width: Math.max(320, $("charts").clientWidth), height: 220 });
  });
  window.wagonDashboard = { state, selectObservation, t0 };
  route();
})();
