// The scheduler dashboard: reads /api/admin/fleet and /api/admin/runs, acts through POST /api/admin/schedulers.
// Plain DOM code, no build step. Every value from the server goes in through textContent (never innerHTML),
// so a run's error text cannot inject markup. The admin token lives in sessionStorage only: asked once per tab.
"use strict";

(() => {
  const TOKEN_KEY = "schedulerAdminToken";
  const params = new URLSearchParams(window.location.search);
  const REFRESH_MS = Math.max(1, Number(params.get("refresh")) || 5) * 1000;
  const PAGE_SIZE = Math.min(500, Math.max(5, Number(params.get("pageSize")) || 25));

  const $ = (id) => document.getElementById(id);
  const state = {
    fleet: null,
    runsOffset: 0,
    historyOffset: 0,
    historyService: null,
    filter: "",
    pending: null, // an action waiting for the token to be entered
    loading: false,
    again: false,
  };

  // ------------------------------------------------------------------------------------------------ helpers

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("data-")) node.setAttribute(key, value);
      else if (key === "onclick") node.addEventListener("click", value);
      else if (value === true) node.setAttribute(key, "");
      else node.setAttribute(key, value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function relative(iso) {
    if (!iso) return "—";
    const seconds = Math.round((new Date(iso).getTime() - Date.now()) / 1000);
    const abs = Math.abs(seconds);
    const units = [["d", 86400], ["h", 3600], ["m", 60], ["s", 1]];
    const parts = [];
    let rest = abs;
    for (const [unit, size] of units) {
      if (rest >= size && parts.length < 2) {
        parts.push(Math.floor(rest / size) + unit);
        rest %= size;
      } else if (parts.length) break;
    }
    if (!parts.length) return "now";
    return seconds > 0 ? "in " + parts.join(" ") : parts.join(" ") + " ago";
  }

  function timeEl(iso) {
    if (!iso) return el("span", { class: "muted", text: "—" });
    const absolute = iso.replace("T", " ").replace(/\.\d+/, "").replace("Z", " UTC");
    return el("time", { datetime: iso, title: absolute, text: relative(iso) });
  }

  function seconds(value) {
    if (value === null || value === undefined) return "—";
    if (value < 1) return Math.round(value * 1000) + " ms";
    return value.toFixed(value < 10 ? 2 : 1) + " s";
  }

  function showMessage(text) {
    const box = $("message");
    box.textContent = text;
    box.hidden = !text;
  }

  function showError(text) {
    const box = $("error");
    box.textContent = text;
    box.hidden = !text;
  }

  async function getJSON(url) {
    const response = await fetch(url, { cache: "no-store", headers: { Accept: "application/json" } });
    let body = null;
    try { body = await response.json(); } catch (_) { body = null; }
    if (!response.ok || !body || body.success === false) {
      throw new Error((body && body.error) || `${url} answered ${response.status}`);
    }
    return body.data;
  }

  // Re-rendering replaces rows; keep keyboard focus on the same control across a refresh.
  function rememberFocus() {
    const active = document.activeElement;
    return active && active.dataset ? active.dataset.key : undefined;
  }

  function restoreFocus(key) {
    if (!key) return;
    const target = document.querySelector(`[data-key="${CSS.escape(key)}"]`);
    if (target && document.activeElement !== target) target.focus();
  }

  // ------------------------------------------------------------------------------------------------ token

  function token() { return sessionStorage.getItem(TOKEN_KEY); }

  function renderTokenState() {
    $("token-state").textContent = token() ? "A token is set for this tab." : "No token set: actions will ask for it.";
  }

  function askForToken(reason) {
    showError(reason);
    const input = $("token-input");
    input.value = "";
    input.focus();
  }

  // ------------------------------------------------------------------------------------------------ actions

  async function act(action, schedulerId) {
    const current = token();
    if (!current) {
      state.pending = { action, schedulerId };
      askForToken(`Enter the admin token to ${action}${schedulerId ? " " + schedulerId : ""}.`);
      return;
    }
    showError("");
    showMessage(`${action}${schedulerId ? " " + schedulerId : ""}…`);
    let response;
    let body = null;
    try {
      response = await fetch("/api/admin/schedulers", {
        method: "POST",
        cache: "no-store",
        headers: { "Content-Type": "application/json", Authorization: "Bearer " + current },
        body: JSON.stringify(schedulerId ? { action, schedulerId } : { action }),
      });
      try { body = await response.json(); } catch (_) { body = null; }
    } catch (err) {
      showMessage("");
      showError(`${action} failed: the server did not answer (${err.message}).`);
      return;
    }
    const detail = (body && body.error) || `HTTP ${response.status}`;
    if (response.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      renderTokenState();
      state.pending = { action, schedulerId };
      showMessage("");
      askForToken(`Wrong admin token: ${detail}. Enter the right one to retry.`);
      return;
    }
    if (!response.ok) {
      showMessage("");
      showError(`${action}${schedulerId ? " " + schedulerId : ""} refused (${response.status}): ${detail}`);
      return;
    }
    showMessage(body.runId ? `Triggered ${schedulerId}: run ${body.runId}.` : body.message || `${action} done.`);
    if (action === "trigger" && schedulerId) {
      state.historyService = schedulerId;
      state.historyOffset = 0;
    }
    await refresh();
  }

  // ------------------------------------------------------------------------------------------------ rendering

  function renderSummary(fleet) {
    const s = fleet.summary;
    const health = fleet.healthy ? "Healthy" : `${s.unhealthy} unhealthy`;
    const summary = $("fleet-summary");
    summary.textContent = `${health} · ${s.total} services · ${s.running} running · ${s.paused} paused · ` +
      `${s.errors} in error · ${s.liveNodes} live node${s.liveNodes === 1 ? "" : "s"}`;
    summary.className = "summary " + (fleet.healthy ? "ok" : "bad");
    $("updated").textContent = "Updated " + new Date().toLocaleTimeString();
  }

  function actionButtons(service) {
    const can = {
      trigger: service.local && !["STOPPED", "NEW"].includes(service.status),
      pause: service.local && service.status === "RUNNING" && !service.paused,
      resume: service.local && (service.status === "PAUSED" || service.paused),
      start: service.local && ["STOPPED", "ERROR", "NEW"].includes(service.status),
      stop: service.local && ["RUNNING", "PAUSED", "ERROR", "STARTING"].includes(service.status),
    };
    const why = service.local ? undefined : "This service does not run in the process serving this page";
    const cell = el("td", { class: "actions" });
    for (const action of ["trigger", "pause", "resume", "start", "stop"]) {
      cell.append(el("button", {
        type: "button",
        "data-key": `${action}:${service.name}`,
        "data-action": action,
        "data-service": service.name,
        "aria-label": `${action[0].toUpperCase() + action.slice(1)} ${service.name}`,
        title: why,
        disabled: !can[action],
        onclick: () => act(action, service.name),
      }, action[0].toUpperCase() + action.slice(1)));
    }
    cell.append(el("button", {
      type: "button",
      "data-key": `history:${service.name}`,
      "aria-label": `Run history of ${service.name}`,
      onclick: () => openHistory(service.name),
    }, "History"));
    return cell;
  }

  function renderServices(fleet) {
    const tbody = $("services-table").tBodies[0];
    const filter = state.filter.toLowerCase();
    const rows = [];
    for (const service of fleet.services) {
      const haystack = [service.name, service.status, service.lease.holder || "", ...service.replicas].join(" ");
      if (filter && !haystack.toLowerCase().includes(filter)) continue;
      const last = service.lastRun;
      const nextRuns = service.nextRuns.length
        ? el("span", {}, service.schedule.description || service.schedule.expression || "", " → ",
          ...service.nextRuns.flatMap((next, i) => [i ? ", " : "", timeEl(next.at)]))
        : el("span", { class: "muted" }, (service.schedule.description || "") +
          (service.paused || service.status === "PAUSED" ? " (paused)" : " (not scheduled)"));
      const statusText = service.paused && service.status === "RUNNING" ? "PAUSED" : service.status;
      rows.push(el("tr", { class: state.historyService === service.name ? "selected" : undefined },
        el("th", { scope: "row" }, service.name,
          service.enabled ? null : el("span", { class: "muted" }, " (disabled)")),
        el("td", { class: "status-" + statusText }, statusText),
        el("td", { class: service.healthy ? "ok" : "bad" }, service.healthy ? "Healthy" : "Unhealthy",
          service.problem ? el("div", { class: "error-text" }, service.problem) : null),
        el("td", {}, service.lease.holder ? `lease: ${service.lease.holder}` : "no lease",
          el("div", { class: "muted" }, "nodes: " + (service.replicas.join(", ") || "none alive"))),
        el("td", {}, last
          ? el("span", {}, el("span", { class: "outcome-" + last.status }, last.status), " ", timeEl(last.when),
            el("div", { class: "muted" }, `took ${seconds(last.durationSeconds)} on ${last.node}`))
          : el("span", { class: "muted" }, "never ran")),
        el("td", {}, `${service.consecutiveFailures}` +
          (service.failureThreshold ? ` / ${service.failureThreshold}` : "")),
        el("td", {}, nextRuns),
        actionButtons(service)));
    }
    if (!rows.length) {
      rows.push(el("tr", {}, el("td", { colspan: "8", class: "muted" },
        fleet.services.length ? "No service matches the filter." : "No services are configured.")));
    }
    tbody.replaceChildren(...rows);
    const local = fleet.services.some((s) => s.local);
    $("start-all").disabled = !local;
    $("stop-all").disabled = !local;
  }

  function renderNodes(fleet) {
    const rows = fleet.nodes.map((node) => el("tr", {},
      el("th", { scope: "row" }, node.nodeId, node.nodeId === fleet.node ? el("span", { class: "muted" }, " (this page)") : null),
      el("td", { class: "state-" + node.state }, node.state),
      el("td", {}, timeEl(node.heartbeatAt)),
      el("td", {}, `${node.hostname} / ${node.pid}`),
      el("td", {}, node.version),
      el("td", {}, node.services.join(", ") || "—")));
    if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: "6", class: "muted" }, "No node has registered yet.")));
    $("nodes-table").tBodies[0].replaceChildren(...rows);
  }

  function runCells(run, withService) {
    return [
      withService ? el("th", { scope: "row" }, el("button", {
        type: "button", class: "link", "data-key": `runs-history:${run.id}`,
        "aria-label": `Run history of ${run.scheduler}`, onclick: () => openHistory(run.scheduler),
      }, run.scheduler)) : null,
      el("td", {}, timeEl(run.scheduledFor)),
      el("td", { class: "outcome-" + run.status }, run.status),
      el("td", {}, run.trigger + (withService && run.attempt > 1 ? ` #${run.attempt}` : "")),
      withService ? null : el("td", {}, String(run.attempt)),
      el("td", {}, seconds(run.lagSeconds)),
      el("td", {}, seconds(run.durationSeconds)),
      withService ? null : el("td", {}, String(run.itemsProcessed)),
      el("td", {}, run.node),
      el("td", { class: "error-text" }, run.error || ""),
    ];
  }

  function renderPager(nav, data, onPage, label) {
    const pages = Math.max(1, Math.ceil(data.total / data.limit));
    const page = Math.floor(data.offset / data.limit) + 1;
    nav.replaceChildren(
      el("button", { type: "button", "data-key": `${label}:prev`, disabled: page <= 1,
        onclick: () => onPage(Math.max(0, data.offset - data.limit)) }, "Newer"),
      el("span", {}, `Page ${page} of ${pages} · ${data.total} runs`),
      el("button", { type: "button", "data-key": `${label}:next`, disabled: page >= pages,
        onclick: () => onPage(data.offset + data.limit) }, "Older"),
    );
  }

  async function loadRuns() {
    const data = await getJSON(`/api/admin/runs?limit=${PAGE_SIZE}&offset=${state.runsOffset}`);
    const rows = data.runs.map((run) => el("tr", {}, ...runCells(run, true)));
    if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: "8", class: "muted" }, "No runs recorded yet.")));
    $("runs-table").tBodies[0].replaceChildren(...rows);
    renderPager($("runs-pager"), data, (offset) => { state.runsOffset = offset; refresh(); }, "runs");
  }

  async function loadHistory() {
    const section = $("history");
    if (!state.historyService) { section.hidden = true; return; }
    const name = state.historyService;
    const data = await getJSON(
      `/api/admin/runs?scheduler=${encodeURIComponent(name)}&limit=${PAGE_SIZE}&offset=${state.historyOffset}`);
    section.hidden = false;
    $("history-heading").textContent = `Run history: ${name}`;
    const rows = data.runs.map((run) => el("tr", { "data-run": run.id }, ...runCells(run, false)));
    if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: "9", class: "muted" }, "No runs recorded yet.")));
    $("history-table").tBodies[0].replaceChildren(...rows);
    renderPager($("history-pager"), data, (offset) => { state.historyOffset = offset; refresh(); }, "history");
  }

  function openHistory(name) {
    state.historyService = name;
    state.historyOffset = 0;
    refresh().then(() => $("history").focus());
  }

  // ------------------------------------------------------------------------------------------------ refresh

  async function refresh() {
    if (state.loading) {
      state.again = true; // an action's refresh must not be lost behind a periodic one
      return;
    }
    state.loading = true;
    const focusKey = rememberFocus();
    try {
      state.fleet = await getJSON("/api/admin/fleet");
      renderSummary(state.fleet);
      renderServices(state.fleet);
      renderNodes(state.fleet);
      await Promise.all([loadRuns(), loadHistory()]);
      if ($("error").dataset.source === "refresh") { showError(""); delete $("error").dataset.source; }
    } catch (err) {
      showError(`Could not refresh: ${err.message}`);
      $("error").dataset.source = "refresh";
    } finally {
      state.loading = false;
      restoreFocus(focusKey);
    }
    if (state.again) {
      state.again = false;
      await refresh();
    }
  }

  let timer = null;
  function schedule() {
    if (timer) clearInterval(timer);
    timer = $("auto-refresh").checked ? setInterval(() => { if (!document.hidden) refresh(); }, REFRESH_MS) : null;
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("refresh-seconds").textContent = String(REFRESH_MS / 1000);
    renderTokenState();
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const value = $("token-input").value.trim();
      if (!value) { askForToken("The token is empty."); return; }
      sessionStorage.setItem(TOKEN_KEY, value);
      $("token-input").value = "";
      renderTokenState();
      showError("");
      const pending = state.pending;
      state.pending = null;
      if (pending) act(pending.action, pending.schedulerId);
      else showMessage("Token saved for this tab.");
    });
    $("token-forget").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      renderTokenState();
      showMessage("Token forgotten.");
    });
    $("service-filter").addEventListener("input", (event) => {
      state.filter = event.target.value;
      if (state.fleet) renderServices(state.fleet);
    });
    $("start-all").addEventListener("click", () => act("startAll"));
    $("stop-all").addEventListener("click", () => act("stopAll"));
    $("history-close").addEventListener("click", () => {
      state.historyService = null;
      $("history").hidden = true;
      if (state.fleet) renderServices(state.fleet);
      $("services").focus();
    });
    $("refresh-now").addEventListener("click", () => refresh());
    $("auto-refresh").addEventListener("change", schedule);
    refresh();
    schedule();
  });
})();
