/* wagon-detector dashboard: a facility list and a facility view, reading the public API (v1) of this service.
 * Charts: uPlot (vendored, MIT). No other dependency, nothing loaded from another origin.
 * Sign-in for browsers that cannot send a header: /dashboard?api_key=KEY once; the key is kept in sessionStorage,
 * sent as "Authorization: Bearer KEY", and removed from the address bar (never put in a URL the page makes).
 * Review: an analyst (or admin) key can correct an image observation's boxes or counts on a canvas over the plain
 * image (PUT/DELETE /v1/observations/{id}/review); reviewed points get a ring on the charts. */
(function () {
  "use strict";

  const KEY_STORE = "wagon.api_key";
  const CLASSES = ["railcar", "container"];
  const LABELS = { railcar: "Railcars", container: "Containers" };
  const C = { blue: "#0072B2", orange: "#E69F00", sky: "rgba(86,180,233,0.28)", skyLine: "#56B4E9",
              vermillion: "#D55E00", black: "#000000", green: "#009E73" };
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
  /** The analyst's verified count of this class for a reviewed observation, else null. */
  function verifiedOf(o, cls) {
    if (!o || !o.review) return null;
    const v = o.verified_counts && o.verified_counts[cls];
    if (v != null) return v;
    const rc = o.review.counts && o.review.counts[cls];
    return rc == null ? null : rc;
  }
  function reviewerName(r) {
    if (r == null) return "unknown";
    if (typeof r !== "object") return String(r);
    const name = r.name || r.key_name || null, id = r.id || r.key_id || null;
    return name && id ? `${name} (${id})` : String(name || id || "unknown");
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
    reviewClose();
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
      const xs = [], ys = [], ex = [], lo = [], hi = [], surge = [], drop = [], reviewed = [], anomalies = [];
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
        reviewed.push(verifiedOf(o, cls));
        if (dir) anomalies.push({ o, dir });
      }
      const wrap = document.createElement("section");
      wrap.className = "chart";
      wrap.dataset.class = cls;
      wrap.dataset.points = String(obs.length);
      wrap.dataset.anomalies = String(anomalies.length);
      wrap.dataset.reviewed = String(reviewed.filter((v) => v != null).length);
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
          { label: "reviewed", stroke: C.green, paths: () => null,  // a ring at the analyst's verified count
            points: { show: true, size: 17, width: 2.5, stroke: C.green, fill: "rgba(0,0,0,0)" } },
        ],
        bands: [{ series: [2, 1], fill: C.sky }],
        axes: [{}, { label: LABELS[cls], size: 60 }],
        hooks: { setCursor: [(u) => tooltip(u, cls, obs)] },
      };
      const plot = new uPlot(opts, [xs, lo, hi, ex, ys, surge, drop, reviewed], plotBox);
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
      `score ${fmtNum(b.score, 2)}   drop score ${fmtNum(b.drop_score, 2)}` + (dir ? `\nANOMALY (${dir})` : "") +
      (o.review ? `\nreviewed by ${reviewerName(o.review.reviewer)}: ${fmtCount(verifiedOf(o, cls))}` : "");
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
        `<td>${esc(o.source)}${o.has_image && o.source !== "image" ? " (image)" : ""}` +
        `${o.review ? ' <span class="reviewed-tag" title="reviewed by an analyst">✓ reviewed</span>' : ""}</td>${cells.join("")}</tr>`);
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
    reviewClose();
  }

  function renderFacts(o) {
    const facts = [["Observation", "#" + o.id], ["Captured", fmtTime(o.captured_at) + " UTC"], ["Source", o.source]];
    for (const c of CLASSES) {
      const b = o.anomaly[c];
      const dir = crossing(b, state.thresholds);
      facts.push([LABELS[c], o.counts[c] == null ? "unknown" : `${o.counts[c]}` + (b ? ` · expected ${fmtNum(b.expected)} ` +
        `(90 % ${fmtNum(b.expected_lo, 0)}–${fmtNum(b.expected_hi, 0)}) · score ${fmtNum(b.score, 2)} · drop ${fmtNum(b.drop_score, 2)}` +
        (dir ? ` · ANOMALY (${dir})` : "") + ` · ${b.reason}` : "")]);
    }
    if (o.model) facts.push(["Model", `${o.model.name} ${o.model.version}`]);
    if (o.review) {
      facts.push(["Reviewed", `${fmtTime(o.review.reviewed_at)} UTC by ${reviewerName(o.review.reviewer)} · verified ` +
        CLASSES.map((c) => `${c} ${fmtCount(verifiedOf(o, c))}`).join(", ")]);
    }
    $("observation-facts").innerHTML = facts.map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(v)}</dd>`).join("");
  }

  async function selectObservation(id) {
    const o = state.series.find((x) => x.id === id);
    if (!o) return;
    state.selected = id;
    markSelectedRow();
    $("observation-hint").hidden = true;
    renderFacts(o);
    reviewClose();
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
      // fetched, so the Bearer header is sent; the plain image (no boxes): the boxes are drawn on a canvas above it
      const [blob, detail] = await Promise.all([
        api(`/v1/observations/${id}/overlay.png?boxes=false`, "blob"),
        api(`/v1/observations/${id}?include=candidates`).catch((e) => e),
      ]);
      if (state.selected !== id) return;
      overlayUrl = URL.createObjectURL(blob);
      img.onload = () => {
        img.dataset.loaded = String(id);
        layoutImage();
        if (state.selected !== id) return;
        if (detail instanceof Error) reviewUnavailable(detail.message);
        else reviewOpen(detail);
      };
      img.src = overlayUrl;
      img.hidden = false;
      img.alt = `Image of observation ${id} with ${o.counts.railcar ?? "?"} railcars and ${o.counts.container ?? "?"} containers counted`;
      $("overlay-caption").textContent = "Boxes drawn over the image: orange railcars, blue containers; " +
        "red dashed ✕ rejected, thick with corner dots added, hatched ignore region.";
    } catch (e) {
      img.hidden = true;
      $("overlay-caption").textContent = "No image available (" + e.message + ").";
    }
  }

  function markSelectedRow() {
    for (const tr of $("observations").querySelectorAll("tr.selected")) tr.classList.remove("selected");
    const row = state.selected == null ? null : $("observations").querySelector(`tr[data-obs="${state.selected}"]`);
    if (row) row.classList.add("selected");
  }

  // ---------------------------------------------------------------------------------------------- review
  // Coordinates: image pixels of the analysed image (the frame of detections[].obb). The plain overlay.png shows the
  // region image.window = [col0, row0, width, height] (whole image without one), scaled to the picture's size.
  const BOX_COLOURS = { railcar: C.orange, container: C.skyLine };
  const rv = {
    id: null, detail: null, win: [0, 0, 1, 1], dets: [], cands: [], added: [], ignore: [],
    selected: null, hover: null, mode: "reject", cls: "railcar", by: "boxes", draft: null,
    dirty: false, readOnly: false, busy: false, seq: 0,
  };
  const canvas = $("review-canvas");
  let hatch = null;

  function reviewClose() {
    rv.id = null;
    rv.detail = null;
    rv.draft = null;
    rv.selected = null;
    rv.hover = null;
    $("review").hidden = true;
    canvas.hidden = true;
    delete $("review").dataset.obs;
  }

  function reviewUnavailable(message) {
    $("review").hidden = false;
    $("review-tools").hidden = true;
    $("review-help").hidden = true;
    $("review-summary").textContent = "";
    $("review-existing").textContent = "Review unavailable: " + message;
  }

  function sameBox(a, b) {
    if (!a || !b || a.length !== b.length) return false;
    return a.every((p) => b.some((q) => Math.abs(p[0] - q[0]) < 0.5 && Math.abs(p[1] - q[1]) < 0.5));
  }

  /** "boxes" or "counts": what an existing review was made of. */
  function reviewKind(review) {
    const k = String(review.kind || review.method || review.mode || "");
    if (k) return /count/i.test(k) ? "counts" : "boxes";
    if ((review.objects && review.objects.length) || (review.ignore && review.ignore.length)) return "boxes";
    if (review.objects == null) return "counts";
    const counted = review.counts && CLASSES.some((c) => review.counts[c] != null);
    return counted && !review.exhaustive ? "counts" : "boxes";
  }

  function reviewOpen(detail) {
    const im = detail.image || {};
    rv.id = detail.id;
    rv.detail = detail;
    rv.win = Array.isArray(im.window) && im.window.length === 4 ? im.window.map(Number) : [0, 0, im.width || 1, im.height || 1];
    rv.dets = (detail.detections || []).map((d) => ({ cls: d.class, obb: d.obb, confidence: d.confidence, rejected: false }));
    rv.cands = (detail.candidates || []).map((d) => ({ cls: d.class, obb: d.obb, confidence: d.confidence, accepted: false }));
    rv.added = [];
    rv.ignore = [];
    rv.draft = null;
    rv.selected = null;
    rv.hover = null;
    rv.readOnly = false;
    const review = detail.review;
    let exhaustive = false, by = "boxes", classes = CLASSES.slice();
    for (const c of CLASSES) $("review-count-" + c).value = "";
    if (review) {
      by = reviewKind(review);
      exhaustive = !!review.exhaustive;
      if (by === "boxes") {
        const objects = (review.objects || []).slice();
        const take = (list, flag, keep) => {
          for (const d of list) {
            const i = objects.findIndex((ob) => ob.class === d.cls && sameBox(ob.obb, d.obb));
            d[flag] = keep ? i >= 0 : i < 0;
            if (i >= 0) objects.splice(i, 1);
          }
        };
        take(rv.dets, "rejected", false);
        take(rv.cands, "accepted", true);
        rv.added = objects.map((ob) => ({ cls: ob.class, obb: ob.obb }));
        rv.ignore = (review.ignore || []).slice();
        const verified = CLASSES.filter((c) => review.counts && review.counts[c] != null);
        classes = exhaustive && verified.length ? verified : CLASSES.slice();
      } else {
        for (const c of CLASSES) {
          const v = review.counts ? review.counts[c] : null;
          $("review-count-" + c).value = v == null ? "" : String(v);
        }
      }
    }
    for (const c of CLASSES) {
      const n = rv.dets.filter((d) => d.cls === c).length;
      $("review-count-" + c).placeholder = `detector: ${n}`;
    }
    $("review-exhaustive").checked = exhaustive;
    setReviewedClasses(classes);
    setBy(by);
    setMode("reject");
    setClass(rv.cls);
    setReadOnly(false);
    rv.dirty = false;
    $("review-tools").hidden = false;
    $("review-help").hidden = false;
    $("review-message").textContent = "";
    $("review").hidden = false;
    canvas.hidden = false;
    renderExisting();
    renderSummary();
    drawReview();
    $("review").dataset.obs = String(rv.id);
  }

  function renderExisting() {
    const r = rv.detail && rv.detail.review;
    const el = $("review-existing");
    if (!r) { el.textContent = "Not reviewed yet: the counts are the detector's."; el.dataset.reviewed = "false"; return; }
    const vc = rv.detail.verified_counts || r.counts || {};
    const parts = [`Reviewed ${fmtTime(r.reviewed_at)} UTC by ${reviewerName(r.reviewer)}`,
      "verified " + CLASSES.map((c) => `${LABELS[c].toLowerCase()} ${fmtCount(vc[c])}`).join(", ")];
    if (reviewKind(r) === "boxes") {
      parts.push(`${(r.objects || []).length} boxes, ${(r.ignore || []).length} ignore region${(r.ignore || []).length === 1 ? "" : "s"}` +
        (r.exhaustive ? ", exhaustive" : ", not exhaustive"));
    } else parts.push("typed counts");
    el.textContent = parts.join(" · ");
    el.dataset.reviewed = "true";
  }

  function reviewedClasses() {
    return CLASSES.filter((c) => $("review-classes").querySelector(`input[data-class="${c}"]`).checked);
  }
  function setReviewedClasses(classes) {
    for (const c of CLASSES) $("review-classes").querySelector(`input[data-class="${c}"]`).checked = classes.includes(c);
  }
  /** The true objects as the analyst sees them: kept detector boxes, accepted candidates and added boxes, of the
   * reviewed classes only. */
  function currentObjects() {
    const out = [], classes = reviewedClasses();
    for (const d of rv.dets) if (!d.rejected) out.push({ class: d.cls, obb: d.obb });
    for (const d of rv.cands) if (d.accepted) out.push({ class: d.cls, obb: d.obb });
    for (const d of rv.added) out.push({ class: d.cls, obb: d.obb });
    return out.filter((o) => classes.includes(o.class));
  }

  function renderSummary() {
    const el = $("review-summary");
    if (rv.by === "counts") {
      el.textContent = "Type a count per class (empty: not reviewed), then save.";
      return;
    }
    const objects = currentObjects();
    const per = CLASSES.map((c) => `${objects.filter((o) => o.class === c).length} ${LABELS[c].toLowerCase()}`);
    const rejected = rv.dets.filter((d) => d.rejected).length, accepted = rv.cands.filter((d) => d.accepted).length;
    el.textContent = `${objects.length} objects (${per.join(", ")}) · ${rejected} rejected · ${rv.added.length} added` +
      (accepted ? ` · ${accepted} candidates accepted` : "") +
      ` · ${rv.ignore.length} ignore region${rv.ignore.length === 1 ? "" : "s"}` +
      ($("review-exhaustive").checked ? " · exhaustive: verifies the counts of " + (reviewedClasses().join(" and ") || "no class")
        : " · not exhaustive: the boxes teach the calibration, the counts stay the detector's");
    Object.assign(el.dataset, { objects: String(objects.length), rejected: String(rejected), added: String(rv.added.length),
      accepted: String(accepted), ignore: String(rv.ignore.length) });
  }

  function markDirty() {
    rv.dirty = true;
    $("review-dirty").hidden = false;
    renderSummary();
    drawReview();
  }

  function reviewMessage(text, kind) {
    const el = $("review-message");
    el.textContent = text;
    el.className = kind === "error" || kind === "refused" ? "error" : "";
    rv.seq += 1;
    $("review").dataset.last = kind || "info";
    $("review").dataset.seq = String(rv.seq);
  }

  function setMode(mode) {
    rv.mode = mode;
    rv.draft = null;
    for (const b of $("review-box-tools").querySelectorAll("button[data-mode]")) {
      b.setAttribute("aria-pressed", String(b.dataset.mode === mode));
    }
    canvas.dataset.mode = mode;
    drawReview();
  }

  function setBy(by) {
    rv.by = by;
    for (const r of document.querySelectorAll("input[name=review-by]")) r.checked = r.value === by;
    $("review-box-tools").hidden = by !== "boxes";
    $("review-count-tools").hidden = by !== "counts";
    renderSummary();
  }

  function setClass(cls) {
    rv.cls = cls;
    $("review-class").value = cls;
    if (rv.selected && rv.selected.type === "added" && rv.selected.item.cls !== cls) {
      rv.selected.item.cls = cls;
      markDirty();
    }
  }

  function setReadOnly(ro) {
    rv.readOnly = ro;
    for (const id of ["review-save", "review-withdraw"]) {
      $(id).disabled = ro;
      $(id).title = ro ? "This key may read but not review" : "";
    }
  }

  // ------------------------------------------------------------------ geometry (image pixels <-> canvas CSS pixels)
  function scaleXY() {
    const w = canvas.clientWidth || 1, h = canvas.clientHeight || 1;
    return [w / rv.win[2], h / rv.win[3]];
  }
  function toCss(p) {
    const [kx, ky] = scaleXY();
    return [(p[0] - rv.win[0]) * kx, (p[1] - rv.win[1]) * ky];
  }
  function fromEvent(ev) {
    const r = canvas.getBoundingClientRect();
    return [rv.win[0] + (ev.clientX - r.left) * rv.win[2] / (r.width || 1),
            rv.win[1] + (ev.clientY - r.top) * rv.win[3] / (r.height || 1)];
  }
  function toClient(x, y) {
    const r = canvas.getBoundingClientRect(), [cx, cy] = toCss([x, y]);
    return { x: r.left + cx, y: r.top + cy };
  }
  function inside(p, poly) {
    let hit = false;
    for (let i = 0, j = poly.length - 1; i < poly.length; j = i++) {
      const [xi, yi] = poly[i], [xj, yj] = poly[j];
      if ((yi > p[1]) !== (yj > p[1]) && p[0] < (xj - xi) * (p[1] - yi) / (yj - yi) + xi) hit = !hit;
    }
    return hit;
  }
  function segDist(p, a, b) {
    const dx = b[0] - a[0], dy = b[1] - a[1], l2 = dx * dx + dy * dy;
    const t = l2 ? Math.max(0, Math.min(1, ((p[0] - a[0]) * dx + (p[1] - a[1]) * dy) / l2)) : 0;
    return Math.hypot(p[0] - a[0] - t * dx, p[1] - a[1] - t * dy);
  }
  function area(poly) {
    let s = 0;
    for (let i = 0, j = poly.length - 1; i < poly.length; j = i++) s += poly[j][0] * poly[i][1] - poly[i][0] * poly[j][1];
    return Math.abs(s) / 2;
  }
  /** The smallest clickable shape under image point p (within 4 CSS pixels of its outline). */
  function hitTest(p) {
    const pc = toCss(p);
    let best = null, bestArea = Infinity;
    const consider = (type, item, obb) => {
      const poly = obb.map(toCss);
      const near = inside(pc, poly) || poly.some((q, i) => segDist(pc, q, poly[(i + 1) % poly.length]) <= 4);
      if (!near) return;
      const a = area(poly);
      if (a < bestArea) { best = { type, item }; bestArea = a; }
    };
    const classes = reviewedClasses();
    for (const d of rv.dets) if (classes.includes(d.cls)) consider("det", d, d.obb);
    for (const d of rv.cands) if (classes.includes(d.cls) && (d.accepted || $("review-candidates").checked)) consider("cand", d, d.obb);
    for (const d of rv.added) consider("added", d, d.obb);
    for (const g of rv.ignore) consider("ignore", g, g);
    return best;
  }
  /** The rotated box of a draft: side a-b, width from the pointer c (signed, perpendicular to a-b). */
  function draftBox(dr) {
    const [ax, ay] = dr.a, [bx, by] = dr.b;
    const len = Math.hypot(bx - ax, by - ay) || 1;
    const nx = -(by - ay) / len, ny = (bx - ax) / len;
    const w = dr.phase === "width" ? (dr.c[0] - bx) * nx + (dr.c[1] - by) * ny : 0;
    const [c0, r0, ww, wh] = rv.win;
    const clamp = ([x, y]) => [Math.min(c0 + ww, Math.max(c0, x)), Math.min(r0 + wh, Math.max(r0, y))];
    return { obb: [[ax, ay], [bx, by], [bx + nx * w, by + ny * w], [ax + nx * w, ay + ny * w]].map(clamp), width: Math.abs(w), len };
  }
  const round1 = (obb) => obb.map(([x, y]) => [Math.round(x * 10) / 10, Math.round(y * 10) / 10]);

  // ------------------------------------------------------------------ drawing
  function hatchPattern(ctx) {
    if (hatch) return hatch;
    const t = document.createElement("canvas");
    t.width = t.height = 8;
    const g = t.getContext("2d");
    g.fillStyle = "rgba(240, 228, 66, 0.25)";
    g.fillRect(0, 0, 8, 8);
    g.strokeStyle = "rgba(0, 0, 0, 0.55)";
    g.lineWidth = 1.5;
    g.beginPath(); g.moveTo(0, 8); g.lineTo(8, 0); g.moveTo(-2, 2); g.lineTo(2, -2); g.moveTo(6, 10); g.lineTo(10, 6); g.stroke();
    hatch = ctx.createPattern(t, "repeat");
    return hatch;
  }
  function pathOf(ctx, obb) {
    const pts = obb.map(toCss);
    ctx.beginPath();
    pts.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
    ctx.closePath();
    return pts;
  }
  function strokeBox(ctx, obb, colour, width, dash) {
    pathOf(ctx, obb);
    ctx.setLineDash(dash || []);
    ctx.lineWidth = width;
    ctx.strokeStyle = colour;
    ctx.stroke();
    ctx.setLineDash([]);
  }
  function drawAdded(ctx, obb, cls, emphasised) {
    strokeBox(ctx, obb, "#fff", emphasised ? 6 : 4.5);
    strokeBox(ctx, obb, BOX_COLOURS[cls] || C.green, emphasised ? 3.5 : 2.5);
    ctx.fillStyle = "#000";
    for (const [x, y] of obb.map(toCss)) { ctx.beginPath(); ctx.arc(x, y, 2.5, 0, 2 * Math.PI); ctx.fill(); }
  }
  function drawIgnore(ctx, obb, emphasised, dashed) {
    pathOf(ctx, obb);
    ctx.fillStyle = hatchPattern(ctx);
    ctx.fill();
    strokeBox(ctx, obb, "#000", emphasised ? 3 : 2, dashed ? [3, 3] : [7, 4]);
  }
  function drawReview() {
    if (!rv.id || canvas.hidden) return;
    const img = $("overlay");
    const w = img.clientWidth, h = img.clientHeight;
    if (!w || !h) return;
    const dpr = window.devicePixelRatio || 1;
    if (canvas.width !== Math.round(w * dpr) || canvas.height !== Math.round(h * dpr)) {
      canvas.width = Math.round(w * dpr);
      canvas.height = Math.round(h * dpr);
    }
    canvas.style.width = w + "px";
    canvas.style.height = h + "px";
    const ctx = canvas.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    ctx.lineJoin = "round";
    const sel = rv.selected && rv.selected.item, hov = rv.hover && rv.hover.item;
    const classes = reviewedClasses();
    const fade = (d) => { ctx.globalAlpha = classes.includes(d.cls) ? 1 : 0.3; };
    for (const g of rv.ignore) drawIgnore(ctx, g, g === sel || g === hov);
    if ($("review-candidates").checked) {
      for (const d of rv.cands) if (!d.accepted) strokeBox(ctx, d.obb, BOX_COLOURS[d.cls] || C.green, d === hov ? 2.5 : 1.2, [2, 3]);
    }
    for (const d of rv.dets) {
      fade(d);
      if (d.rejected) {  // dashed vermillion on a black halo, crossed out
        const pts = d.obb.map(toCss);
        const cross = () => {
          ctx.beginPath();
          ctx.moveTo(pts[0][0], pts[0][1]); ctx.lineTo(pts[2][0], pts[2][1]);
          ctx.moveTo(pts[1][0], pts[1][1]); ctx.lineTo(pts[3][0], pts[3][1]);
        };
        strokeBox(ctx, d.obb, "#000", d === hov ? 5 : 4);
        cross(); ctx.lineWidth = 3.5; ctx.strokeStyle = "#000"; ctx.stroke();
        strokeBox(ctx, d.obb, C.vermillion, d === hov ? 3 : 2, [4, 3]);
        cross(); ctx.lineWidth = 1.8; ctx.strokeStyle = C.vermillion; ctx.stroke();
      } else {
        strokeBox(ctx, d.obb, BOX_COLOURS[d.cls] || C.green, d === hov ? 3.5 : 1.8);
      }
    }
    for (const d of rv.cands) if (d.accepted) { fade(d); drawAdded(ctx, d.obb, d.cls, d === hov); }
    for (const d of rv.added) { fade(d); drawAdded(ctx, d.obb, d.cls, d === sel || d === hov); }
    ctx.globalAlpha = 1;
    if (sel) {
      const obb = Array.isArray(sel) ? sel : sel.obb;
      strokeBox(ctx, obb, "#000", 1.5, [2, 2]);
    }
    if (rv.draft) {
      const box = draftBox(rv.draft).obb;
      if (rv.draft.kind === "ignore") drawIgnore(ctx, box, true, true);
      else {
        strokeBox(ctx, box, "#fff", 4);
        strokeBox(ctx, box, BOX_COLOURS[rv.cls] || C.green, 2, [5, 3]);
      }
    }
    canvas.setAttribute("aria-label", $("review-summary").textContent || "Boxes to review");
  }
  if (window.ResizeObserver) new ResizeObserver(() => drawReview()).observe($("overlay"));
  window.addEventListener("resize", () => drawReview());

  // ------------------------------------------------------------------ pointer: click to reject, draw to add/ignore
  function finishDraft() {
    const dr = rv.draft;
    rv.draft = null;
    const box = draftBox(dr), [kx] = scaleXY();
    if (box.width * kx < 2) {
      reviewMessage("Too thin: after dragging the long side, move the pointer sideways to set the width, then click.", "error");
      drawReview();
      return;
    }
    const obb = round1(box.obb);
    if (dr.kind === "ignore") {
      rv.ignore.push(obb);
      rv.selected = { type: "ignore", item: obb };
    } else {
      const item = { cls: rv.cls, obb };
      rv.added.push(item);
      rv.selected = { type: "added", item };
    }
    markDirty();
  }
  function selectAt(p) {
    const h = hitTest(p);
    rv.selected = h && (h.type === "added" || h.type === "ignore") ? h : null;
    if (rv.selected && rv.selected.type === "added") { rv.cls = rv.selected.item.cls; $("review-class").value = rv.cls; }
    drawReview();
  }
  canvas.addEventListener("pointerdown", (ev) => {
    if (ev.button !== 0 || !rv.id) return;
    ev.preventDefault();
    canvas.focus({ preventScroll: true });
    const p = fromEvent(ev);
    if (rv.draft && rv.draft.phase === "width") { rv.draft.c = p; finishDraft(); return; }
    if (rv.mode === "add" || rv.mode === "ignore") {
      rv.draft = { kind: rv.mode, phase: "length", a: p, b: p, c: p };
      try { canvas.setPointerCapture(ev.pointerId); } catch (e) { /* synthetic pointer */ }
      drawReview();
      return;
    }
    const h = hitTest(p);
    if (h && h.type === "det") { h.item.rejected = !h.item.rejected; rv.selected = null; markDirty(); }
    else if (h && h.type === "cand") { h.item.accepted = !h.item.accepted; rv.selected = null; markDirty(); }
    else selectAt(p);
  });
  canvas.addEventListener("pointermove", (ev) => {
    if (!rv.id) return;
    const p = fromEvent(ev);
    if (rv.draft) {
      if (rv.draft.phase === "length") rv.draft.b = p; else rv.draft.c = p;
      drawReview();
      return;
    }
    const h = rv.mode === "reject" ? hitTest(p) : null;
    if ((h && h.item) !== (rv.hover && rv.hover.item)) { rv.hover = h; drawReview(); }
  });
  canvas.addEventListener("pointerup", (ev) => {
    if (!rv.draft || rv.draft.phase !== "length") return;
    rv.draft.b = fromEvent(ev);
    const [a, b] = [toCss(rv.draft.a), toCss(rv.draft.b)];
    if (Math.hypot(b[0] - a[0], b[1] - a[1]) < 4) { rv.draft = null; selectAt(fromEvent(ev)); return; }  // a click
    rv.draft.phase = "width";
    rv.draft.c = rv.draft.b;
    drawReview();
  });
  canvas.addEventListener("pointerleave", () => { if (rv.hover) { rv.hover = null; drawReview(); } });
  canvas.addEventListener("contextmenu", (ev) => { if (rv.draft) { ev.preventDefault(); rv.draft = null; drawReview(); } });

  // ------------------------------------------------------------------ toolbar and keyboard
  $("review-box-tools").addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-mode]");
    if (b) setMode(b.dataset.mode);
  });
  $("review-class").addEventListener("change", () => setClass($("review-class").value));
  $("review-exhaustive").addEventListener("change", () => markDirty());
  $("review-classes").addEventListener("change", () => markDirty());
  $("review-candidates").addEventListener("change", () => drawReview());
  for (const r of document.querySelectorAll("input[name=review-by]")) r.addEventListener("change", () => { setBy(r.value); markDirty(); });
  for (const c of CLASSES) $("review-count-" + c).addEventListener("input", () => { rv.dirty = true; $("review-dirty").hidden = false; });
  $("review-save").addEventListener("click", () => saveReview());
  $("review-withdraw").addEventListener("click", () => withdrawReview());
  /** Enlarged: the image as wide as the page allows (scaled up if small), and no taller than the window. */
  function layoutImage() {
    const img = $("overlay"), wide = document.querySelector(".split").classList.contains("wide");
    if (!wide || !img.naturalWidth) { img.style.width = ""; return; }
    const room = $("overlay-figure").clientWidth - 4;
    const tall = Math.max(240, window.innerHeight - 40) * img.naturalWidth / img.naturalHeight;
    img.style.width = Math.max(120, Math.floor(Math.min(room, tall))) + "px";
  }
  $("review-wide").addEventListener("click", () => {
    const wide = !document.querySelector(".split").classList.contains("wide");
    document.querySelector(".split").classList.toggle("wide", wide);
    $("review-wide").setAttribute("aria-pressed", String(wide));
    $("review-wide").textContent = wide ? "Shrink" : "Enlarge";
    layoutImage();
    drawReview();
    if (wide) $("overlay-stage").scrollIntoView({ block: "start" });
  });
  window.addEventListener("resize", () => layoutImage());

  function removeSelected() {
    const s = rv.selected;
    if (!s) { reviewMessage("Nothing selected: click an added box or an ignore region first."); return; }
    const list = s.type === "added" ? rv.added : rv.ignore;
    const i = list.indexOf(s.item);
    if (i >= 0) list.splice(i, 1);
    rv.selected = null;
    markDirty();
  }

  document.addEventListener("keydown", (ev) => {
    if (!rv.id || $("review").hidden || $("facility-view").hidden || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const t = ev.target;
    const typing = t && (t.isContentEditable || t.tagName === "TEXTAREA" || t.tagName === "SELECT" ||
      (t.tagName === "INPUT" && !["checkbox", "radio", "button", "submit"].includes(t.type)));
    if (ev.key === "Escape") {
      if (rv.draft || rv.selected) { ev.preventDefault(); rv.draft = null; rv.selected = null; drawReview(); }
      return;
    }
    if (typing) return;
    const key = ev.key.length === 1 ? ev.key.toLowerCase() : ev.key;
    if (key === "a" || key === "i") { setBy("boxes"); setMode(key === "a" ? "add" : "ignore"); }
    else if (key === "r") { setBy("boxes"); setMode("reject"); }
    else if (key === "1" || key === "2") setClass(CLASSES[Number(key) - 1]);
    else if (key === "s") saveReview();
    else if (key === "w") withdrawReview();
    else if (key === "Delete" || key === "Backspace") removeSelected();
    else return;
    ev.preventDefault();
  });

  // ------------------------------------------------------------------ save / withdraw
  function detailText(d) {
    if (d == null) return "";
    if (typeof d === "string") return d;
    if (Array.isArray(d)) return d.map((e) => (e && e.msg ? (e.loc ? e.loc.slice(1).join(".") + ": " : "") + e.msg : JSON.stringify(e))).join("; ");
    return JSON.stringify(d);
  }

  async function sendReview(method, body) {
    const id = rv.id;
    rv.busy = true;
    $("review-save").disabled = $("review-withdraw").disabled = true;
    try {
      const headers = authHeaders();
      if (body) headers["Content-Type"] = "application/json";
      const r = await fetch(`/v1/observations/${id}/review`, { method, headers, credentials: "same-origin",
        body: body ? JSON.stringify(body) : undefined });
      let data = null;
      try { data = await r.json(); } catch (e) { /* not JSON */ }
      if (r.status === 401) throw new Error("Not signed in: open this page once as /dashboard?api_key=YOUR_KEY");
      if (r.status === 403) {
        setReadOnly(true);
        reviewMessage("Refused (403): this key may read but not review. Sign in with an analyst (or admin) key " +
          "to save or withdraw a review." + (data && data.detail ? " (" + detailText(data.detail) + ")" : ""), "refused");
        return null;
      }
      if (!r.ok) throw new Error(`${r.status} ${detailText(data && data.detail) || r.statusText}`);
      return rv.id === id ? data : null;
    } catch (e) {
      reviewMessage((method === "PUT" ? "Not saved: " : "Not withdrawn: ") + e.message, "error");
      return null;
    } finally {
      rv.busy = false;
      setReadOnly(rv.readOnly);
    }
  }

  async function saveReview() {
    if (!rv.id || rv.busy) return;
    if (rv.readOnly) { reviewMessage("This key may read but not review: sign in with an analyst key to save.", "refused"); return; }
    let body;
    if (rv.by === "counts") {
      const counts = {};
      for (const c of CLASSES) {
        const v = $("review-count-" + c).value.trim();
        if (v === "") continue;
        const n = Number(v);
        if (!Number.isInteger(n) || n < 0) { reviewMessage(`${LABELS[c]}: a whole number ≥ 0, please.`, "error"); return; }
        counts[c] = n;
      }
      if (!Object.keys(counts).length) { reviewMessage("Type a count for at least one class.", "error"); return; }
      body = { counts };
    } else {
      rv.draft = null;
      const classes = reviewedClasses();
      if (!classes.length) { reviewMessage("Tick at least one class you reviewed.", "error"); return; }
      body = { objects: currentObjects(), ignore: rv.ignore, exhaustive: $("review-exhaustive").checked, classes };
    }
    reviewMessage("Saving…");
    const detail = await sendReview("PUT", body);
    if (!detail) return;
    const fresh = await api(`/v1/observations/${detail.id}?include=candidates`).catch(() => detail);
    if (rv.id !== detail.id) return;
    const keep = { mode: rv.mode, cls: rv.cls };
    reviewOpen(fresh);
    setMode(keep.mode);
    setClass(keep.cls);
    await reviewApplied(fresh);
    const vc = detail.verified_counts || {};
    reviewMessage(`Saved: verified ${CLASSES.map((c) => `${c} ${fmtCount(vc[c])}`).join(", ")}.`, "saved");
  }

  async function withdrawReview() {
    if (!rv.id || rv.busy) return;
    if (rv.readOnly) { reviewMessage("This key may read but not review: sign in with an analyst key to withdraw.", "refused"); return; }
    if (!(rv.detail && rv.detail.review)) { reviewMessage("Nothing to withdraw: this observation has no review."); return; }
    reviewMessage("Withdrawing…");
    const detail = await sendReview("DELETE", null);
    if (!detail) return;
    await reviewApplied(detail);
    rv.dirty = true;
    $("review-dirty").hidden = false;
    reviewMessage("Review withdrawn: the counts are the detector's again. Your marks stay on screen (s saves them again).",
                  "withdrawn");
  }

  /** After a save or withdrawal: the new detail, then the facility's series again (a review recalibrates the
   * facility: its images' counts and the whole history's scores may change), the charts' rings and the table. */
  async function reviewApplied(detail) {
    rv.detail = detail;
    rv.dirty = false;
    $("review-dirty").hidden = true;
    renderExisting();
    const o = state.series.find((x) => x.id === detail.id);
    if (o) {  // at once, from the answer; then the whole series
      const r = detail.review;
      o.review = r ? { reviewed_at: r.reviewed_at, reviewer: r.reviewer, exhaustive: r.exhaustive, counts: r.counts } : null;
      o.verified_counts = detail.verified_counts || null;
      o.counts = detail.counts || o.counts;
    }
    if (state.facility) {
      try {
        const fid = state.facility.id;
        const series = await allObservations(fid);
        if (state.facility && state.facility.id === fid) state.series = series;
      } catch (e) { status(e.message, true); }
    }
    const [lo, hi] = state.range || [null, null];
    const loMs = lo ? Date.parse(lo) : -Infinity, hiMs = hi ? Date.parse(hi) : Infinity;
    state.shown = state.series.filter((x) => { const t = Date.parse(x.captured_at); return t >= loMs && t <= hiMs; });
    drawCharts();
    drawTable();
    markSelectedRow();
    const now = state.series.find((x) => x.id === detail.id);
    if (now) renderFacts(now);
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
  window.wagonDashboard = { state, selectObservation, t0, review: { state: rv, toClient, hitTest, currentObjects } };
  route();
})();
