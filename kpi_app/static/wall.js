// The live wall. Vanilla JS, no build step, no third-party code.
//
// Live updates are done by polling GET /api/kpis every 3 s rather than by Server-Sent
// Events or WebSockets: a plain short GET works through every proxy, load balancer and
// corporate filter (some buffer or cut long-lived responses), needs no server-side
// connection state, and recovers by itself after a restart. 3 s is well within the
// freshness the KPIs have, and one read of the document is a single Redis round trip.
//
// Each poll reads the current period (window=<w>, by=rep) and the previous one, for the
// deltas: for a rolling window (and today) the same window one length earlier (as_of -
// length); for mtd/qtd/ytd the like-for-like <w>_prev window of the same document.
// Values from the API (rep names included) are only ever written with textContent.
"use strict";

(() => {
  const POLL_MS = 3000;
  const REQUEST_TIMEOUT_MS = 8000;
  const STALE_AFTER_MS = 2 * POLL_MS + 1500;
  const OFFLINE_AFTER_FAILURES = 3;
  const DAY_MS = 86400 * 1000;
  const WINDOWS = { "24h": DAY_MS, "7d": 7 * DAY_MS, "30d": 30 * DAY_MS, "90d": 90 * DAY_MS, today: DAY_MS };
  const PERIODS = { mtd: "mtd_prev", qtd: "qtd_prev", ytd: "ytd_prev" };
  const KPI_LABELS = {
    revenue_won: "Revenue won", deals_won: "Deals won", new_customers: "New customers",
    leads: "Leads", qualified_leads: "Qualified leads",
  };
  const QUOTA_TEAM = 2;
  const QUOTA_REPS = 8;
  const DEFAULT_WINDOW = "30d";
  const LEADERS = 8;
  const DASH = "—";

  const state = { window: DEFAULT_WINDOW, generation: 0, timer: 0, lastOk: 0, failures: 0, updates: 0 };
  const $ = (sel) => document.querySelector(sel);
  const $$ = (sel) => Array.from(document.querySelectorAll(sel));

  // ---- formatting ----
  const numberFmt = new Intl.NumberFormat(undefined, { maximumFractionDigits: 0 });
  const percentFmt = new Intl.NumberFormat(undefined, { style: "percent", maximumFractionDigits: 1 });
  const moneyFmts = new Map();

  function moneyFormat(currency, compact) {
    const key = `${currency}:${compact}`;
    if (!moneyFmts.has(key)) {
      const options = { style: "currency", currency, maximumFractionDigits: compact ? 1 : 0 };
      if (compact) options.notation = "compact";
      let fmt;
      try {
        fmt = new Intl.NumberFormat(undefined, options);
      } catch (_err) {
        fmt = { format: (v) => `${numberFmt.format(v)} ${currency}` };
      }
      moneyFmts.set(key, fmt);
    }
    return moneyFmts.get(key);
  }

  function isNumber(v) {
    return typeof v === "number" && Number.isFinite(v);
  }

  function format(value, kind, currency) {
    if (!isNumber(value)) return DASH;
    switch (kind) {
      case "percent": return percentFmt.format(value);
      case "money": return moneyFormat(currency, Math.abs(value) >= 100000).format(value);
      case "days": return `${value.toFixed(1)} d`;
      case "times": return `${value.toFixed(1)}×`;
      case "score": return `${value > 0 ? "+" : ""}${Math.round(value)}`;
      default: return numberFmt.format(value);
    }
  }

  // Change against the previous period: percentage points for ratios, points for NPS,
  // relative change otherwise (absolute when the previous value is 0).
  function delta(cur, prev, kind, currency) {
    if (!isNumber(cur) || !isNumber(prev)) return { text: `${DASH} vs prev`, sign: 0 };
    const diff = cur - prev;
    const sign = Math.abs(diff) < 1e-9 ? 0 : Math.sign(diff);
    const arrow = sign > 0 ? "▲" : sign < 0 ? "▼" : "=";
    let amount;
    if (kind === "percent") amount = `${Math.abs(diff * 100).toFixed(1)} pp`;
    else if (kind === "score") amount = `${Math.abs(Math.round(diff))} pts`;
    else if (kind === "times") amount = `${Math.abs(diff).toFixed(1)}×`;
    else if (prev !== 0) {
      const pct = Math.abs((diff / Math.abs(prev)) * 100);
      amount = `${pct.toFixed(pct < 10 ? 1 : 0)}%`;
    }
    else amount = format(Math.abs(diff), kind, currency);
    return { text: sign === 0 ? "= vs prev" : `${arrow} ${amount} vs prev`, sign };
  }

  function raw(value) {
    return JSON.stringify(value === undefined ? null : value);
  }

  // Shrink a big number until it fits its box (long currency values on narrow screens).
  function fit(el) {
    el.style.fontSize = "";
    let size = parseFloat(getComputedStyle(el).fontSize);
    while (el.scrollWidth > el.clientWidth + 1 && size > 18) {
      size *= 0.92;
      el.style.fontSize = `${size}px`;
    }
  }

  function cell(text, field, value, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (field) {
      td.dataset.field = field;
      td.dataset.value = raw(value);
    }
    if (cls) td.className = cls;
    return td;
  }

  // ---- rendering ----
  function renderTiles(total, prevTotal, currency) {
    for (const tile of $$("[data-kpi]")) {
      const name = tile.dataset.kpi;
      const kind = tile.dataset.format;
      const value = total[name];
      const prev = prevTotal ? prevTotal[name] : null;
      tile.dataset.value = raw(value);
      tile.dataset.prev = raw(prev);
      const valueEl = tile.querySelector(".value");
      valueEl.textContent = format(value, kind, currency);
      fit(valueEl);
      const d = delta(value, prev, kind, currency);
      const deltaEl = tile.querySelector(".delta");
      deltaEl.textContent = d.text;
      const better = tile.dataset.better === "down" ? -1 : 1;
      deltaEl.classList.toggle("good", d.sign * better > 0);
      deltaEl.classList.toggle("bad", d.sign * better < 0);
      if (name === "ltv_cac_ratio") {
        tile.dataset.level = !isNumber(value) ? "none" : value >= 3 ? "good" : value >= 1 ? "warn" : "bad";
      }
    }
  }

  function renderFunnel(total) {
    const steps = $$("[data-funnel]");
    const values = steps.map((li) => total[li.dataset.funnel]);
    const widest = Math.max(1, ...values.filter(isNumber));
    steps.forEach((li, i) => {
      const value = values[i];
      li.dataset.value = raw(value);
      li.querySelector(".count").textContent = format(value, "count");
      li.querySelector(".fill").style.width = `${isNumber(value) ? (100 * value) / widest : 0}%`;
      const rateEl = li.querySelector("[data-rate]");
      if (i === 0) {
        rateEl.dataset.value = raw(null);
        rateEl.textContent = "";
        return;
      }
      const before = values[i - 1];
      const rate = isNumber(before) && before > 0 && isNumber(value) ? value / before : null;
      rateEl.dataset.value = raw(rate);
      rateEl.textContent = format(rate, "percent");
    });
  }

  function renderLeaders(byRep, currency) {
    const rows = Object.entries(byRep || {})
      .sort(([ra, a], [rb, b]) =>
        (b.revenue_won - a.revenue_won) || (b.new_customers - a.new_customers) || (ra < rb ? -1 : ra > rb ? 1 : 0))
      .slice(0, LEADERS);
    const body = $("#leaders");
    body.replaceChildren(...rows.map(([rep, k], i) => {
      const tr = document.createElement("tr");
      tr.dataset.rep = rep;
      tr.append(
        cell(String(i + 1), null, null, "rank"),
        cell(rep, null, null, "rep"),
        cell(format(k.revenue_won, "money", currency), "revenue_won", k.revenue_won, "num"),
        cell(format(k.new_customers, "count"), "new_customers", k.new_customers, "num"),
      );
      return tr;
    }));
    $("#leaders-empty").hidden = rows.length > 0;
  }

  function renderPipeline(pipeline, currency) {
    const stages = Object.entries(pipeline.by_stage || {});
    $("#pipeline").replaceChildren(...stages.map(([stage, s]) => {
      const tr = document.createElement("tr");
      tr.dataset.stage = stage;
      tr.append(
        cell(stage),
        cell(format(s.open_deals, "count"), "open_deals", s.open_deals, "num"),
        cell(format(s.value, "money", currency), "value", s.value, "num"),
      );
      return tr;
    }));
    for (const el of $$("[data-pipeline]")) {
      const field = el.dataset.pipeline;
      const value = pipeline[field];
      el.dataset.value = raw(value);
      el.textContent = format(value, field === "open_deals" ? "count" : "money", currency);
      fit(el);
    }
  }

  function targetItem(t, label, currency, withTarget) {
    const div = document.createElement("div");
    div.className = "target";
    div.dataset.target = `${t.kpi}|${t.period}|${t.scope}`;
    div.dataset.attainment = raw(t.attainment);
    div.dataset.elapsed = raw(t.elapsed);
    div.dataset.status = t.status || "none";
    const name = document.createElement("span");
    name.className = "label";
    name.textContent = label;
    const track = document.createElement("span");
    track.className = "track";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = `${isNumber(t.attainment) ? Math.min(1, t.attainment) * 100 : 0}%`;
    const pace = document.createElement("span");
    pace.className = "pace";
    pace.style.left = `${Math.min(1, t.elapsed) * 100}%`; // where attainment is on pace today
    track.append(fill, pace);
    const figure = document.createElement("span");
    figure.className = "figure";
    const kind = t.kpi === "revenue_won" ? "money" : "count";
    const target = format(t.target, kind, currency);
    figure.textContent = withTarget ? `${format(t.attainment, "percent")} of ${target}` : format(t.attainment, "percent");
    div.title = `${label}: ${format(t.actual, kind, currency)} of ${target}, pace ${isNumber(t.pace) ? t.pace.toFixed(2) : DASH}`;
    div.append(name, track, figure);
    return div;
  }

  // The quota row: team targets (scope total) with a pace marker, then the reps' targets of
  // the first rep-scoped KPI and period, best attainment first. Hidden without targets.
  function renderQuota(targets, currency) {
    const team = targets.filter((t) => t.scope === "total").slice(0, QUOTA_TEAM);
    const first = targets.find((t) => t.scope.startsWith("rep:"));
    const reps = first
      ? targets.filter((t) => t.scope.startsWith("rep:") && t.kpi === first.kpi && t.period === first.period)
        .sort((a, b) => (b.attainment ?? -1) - (a.attainment ?? -1)).slice(0, QUOTA_REPS)
      : [];
    $("#quota-team").replaceChildren(...team.map((t) =>
      targetItem(t, `${KPI_LABELS[t.kpi] || t.kpi} · ${t.period}`, currency, true)));
    $("#quota-reps").replaceChildren(...reps.map((t) => targetItem(t, t.scope.slice(4), currency, false)));
    const shown = team.length + reps.length > 0;
    $("#quota").hidden = !shown;
    $("#quota-team").hidden = team.length === 0;
    $("#quota-reps").hidden = reps.length === 0;
    $(".wall").classList.toggle("has-quota", shown);
  }

  function render(doc, prevDoc, windowName) {
    const win = doc.windows[windowName] || {};
    const prevWin = prevDoc && prevDoc.windows[windowName];
    const total = win.total || {};
    renderTiles(total, prevWin ? prevWin.total : null, doc.currency);
    renderFunnel(total);
    renderLeaders(win.by_rep, doc.currency);
    renderPipeline(doc.current.pipeline, doc.currency);
    renderQuota(doc.targets || [], doc.currency);
    state.updates += 1;
    document.body.dataset.window = windowName;
    document.body.dataset.asOf = doc.as_of;
    document.body.dataset.updates = String(state.updates);
  }

  // ---- status ----
  function updateStatus() {
    let status;
    const age = Date.now() - state.lastOk;
    if (state.failures >= OFFLINE_AFTER_FAILURES) status = "offline";
    else if (state.lastOk === 0) status = state.failures > 0 ? "stale" : "loading";
    else if (state.failures > 0 || age > STALE_AFTER_MS) status = "stale";
    else status = "live";
    document.body.dataset.status = status;
    const labels = { loading: "connecting", live: "live", stale: "stale", offline: "offline" };
    $("#status-text").textContent = labels[status];
    const seconds = Math.round(age / 1000);
    $("#age").textContent = state.lastOk && seconds >= 5 ? `· ${seconds} s ago` : "";
  }

  // ---- polling ----
  // A wall screen opened as /?key=<view key> passes the same key on its API calls
  // (the server compares it with KPI_VIEW_KEYS; without configured keys it is ignored).
  const VIEW_KEY = new URLSearchParams(location.search).get("key");

  function withKey(url) {
    return VIEW_KEY ? `${url}&key=${encodeURIComponent(VIEW_KEY)}` : url;
  }

  async function getJson(url) {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), REQUEST_TIMEOUT_MS);
    try {
      const res = await fetch(withKey(url), { cache: "no-store", signal: controller.signal });
      if (!res.ok) throw new Error(`${url}: HTTP ${res.status}`); // url without the key: never logged
      return await res.json();
    } finally {
      clearTimeout(timer);
    }
  }

  async function poll() {
    clearTimeout(state.timer);
    const generation = ++state.generation;
    const windowName = state.window;
    try {
      let doc;
      let prev;
      if (Object.prototype.hasOwnProperty.call(PERIODS, windowName)) {
        doc = await getJson(`/api/kpis?window=${windowName},${PERIODS[windowName]}&by=rep`);
        prev = { windows: { [windowName]: doc.windows[PERIODS[windowName]] } };
      } else {
        doc = await getJson(`/api/kpis?window=${windowName}&by=rep`);
        const prevAsOf = new Date(Date.parse(doc.as_of) - WINDOWS[windowName]).toISOString();
        prev = await getJson(`/api/kpis?window=${windowName}&by=total&as_of=${encodeURIComponent(prevAsOf)}`);
      }
      if (generation !== state.generation) return; // the window changed meanwhile
      render(doc, prev, windowName);
      state.failures = 0;
      state.lastOk = Date.now();
      $("#updated").textContent = new Date(state.lastOk).toLocaleTimeString([], { hour12: false });
      $("#updated").dateTime = new Date(state.lastOk).toISOString();
    } catch (err) {
      if (generation !== state.generation) return;
      state.failures += 1;
      console.warn("poll failed", err);
    } finally {
      if (generation === state.generation) {
        updateStatus();
        state.timer = setTimeout(poll, POLL_MS);
      }
    }
  }

  function windowFromHash() {
    const match = /(?:^#|&)window=([^&]*)/.exec(location.hash);
    const name = match ? decodeURIComponent(match[1]) : "";
    const known = Object.prototype.hasOwnProperty.call(WINDOWS, name)
      || Object.prototype.hasOwnProperty.call(PERIODS, name);
    return known ? name : DEFAULT_WINDOW;
  }

  function selectWindow() {
    state.window = windowFromHash();
    for (const a of $$("[data-window]")) {
      a.setAttribute("aria-current", String(a.dataset.window === state.window));
    }
    for (const el of $$(".panel-window")) el.textContent = state.window;
    poll();
  }

  // ---- alert banner ----
  // Firing sales alerts from GET /api/alerts (the server asks Alertmanager and caches).
  // Any failure hides the banner: the KPIs matter more than the banner.
  const ALERTS_POLL_MS = 15000;
  const MAX_BANNER = 3;

  function sinceText(iso) {
    const at = new Date(iso);
    if (Number.isNaN(at.getTime())) return "";
    const sameDay = new Date().toDateString() === at.toDateString();
    const time = at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", hour12: false });
    return sameDay ? `since ${time}` : `since ${at.toLocaleDateString([], { month: "short", day: "numeric" })} ${time}`;
  }

  function renderAlerts(banner) {
    const box = $("#alerts");
    const alerts = banner && Array.isArray(banner.alerts) ? banner.alerts : [];
    const rows = alerts.slice(0, MAX_BANNER).map((a) => {
      const div = document.createElement("div");
      div.className = "alert";
      div.dataset.alert = a.alertname;
      div.dataset.where = a.where;
      div.dataset.since = a.starts_at;
      const what = document.createElement("span");
      what.className = "what";
      what.textContent = `⚠ ${a.summary}`;
      const detail = document.createElement("span");
      detail.className = "detail";
      detail.textContent = a.description;
      detail.title = [a.description, a.look_at].filter(Boolean).join(" ");
      const since = document.createElement("time");
      since.className = "since";
      since.dateTime = a.starts_at;
      since.textContent = sinceText(a.starts_at);
      div.append(what, detail, since);
      return div;
    });
    const total = banner && Number.isInteger(banner.total) ? banner.total : alerts.length;
    if (total > rows.length && rows.length > 0) {
      const more = document.createElement("div");
      more.className = "more";
      more.textContent = `+ ${total - rows.length} more sales alerts`;
      rows.push(more);
    }
    box.replaceChildren(...rows);
    box.hidden = alerts.length === 0;
  }

  async function pollAlerts() {
    try {
      renderAlerts(await getJson("/api/alerts?"));
    } catch (err) {
      renderAlerts(null);
      console.warn("alerts poll failed", err);
    } finally {
      setTimeout(pollAlerts, ALERTS_POLL_MS);
    }
  }

  window.addEventListener("hashchange", selectWindow);
  setInterval(updateStatus, 1000);
  selectWindow();
  pollAlerts();
})();
