// The mcproxy admin dashboard: sign in with an admin token, then poll the overview every
// 2 s while the tab is visible. Every piece of data goes into the page as text
// (textContent), never as HTML.
"use strict";

(function () {
  const TOKEN_KEY = "mcproxy.adminToken";
  const OVERVIEW = "/admin/api/overview";
  const INTERVAL_MS = 2000;

  const BADGES = {
    connected: "good", ok: "good",
    reconnecting: "warn", cancelled: "idle", disconnected: "idle",
    failed: "bad", error: "bad", denied: "bad", unknown_tool: "bad", rate_limited: "warn",
    internal_error: "bad", tool: "bad", browser: "warn",
    up: "good", draining: "warn", down: "bad",
  };

  const $ = (id) => document.getElementById(id);
  let token = null;
  let timer = null;
  let inFlight = null;

  class HttpError extends Error {
    constructor(status, message) {
      super(message);
      this.status = status;
    }
  }

  async function fetchOverview(withToken) {
    const response = await fetch(OVERVIEW, {
      headers: { Authorization: "Bearer " + withToken, Accept: "application/json" },
      cache: "no-store",
      credentials: "omit", // no browser password prompt, no cookies: the token is the credential
    });
    let body = null;
    try {
      body = await response.json();
    } catch (e) {
      body = null;
    }
    if (!response.ok) {
      const message = body && body.error && body.error.message ? body.error.message : "HTTP " + response.status;
      throw new HttpError(response.status, message);
    }
    return body;
  }

  function explain(error) {
    if (error.status === 401) {
      return "This token was not accepted: it is wrong, expired or revoked.";
    }
    if (error.status === 403) {
      return "This token is not an admin token. Sign in with a token that has the 'admin' permission.";
    }
    if (error.status === 429) {
      return "Too many requests; wait a moment and try again.";
    }
    if (error instanceof HttpError) {
      return "The proxy refused: " + error.message;
    }
    return "Cannot reach the proxy: " + error.message;
  }

  // -- signing in and out ----------------------------------------------------------

  function showSignIn(message) {
    stopPolling();
    token = null;
    sessionStorage.removeItem(TOKEN_KEY);
    $("board").hidden = true;
    $("sign-out").hidden = true;
    $("sign-in").hidden = false;
    setStatus("Signed out", false);
    const error = $("sign-in-error");
    error.textContent = message || "";
    error.hidden = !message;
    $("token").setAttribute("aria-invalid", message ? "true" : "false");
    for (const id of ["users", "sessions", "calls", "errors", "changes"]) {
      $(id).tBodies[0].replaceChildren();
    }
  }

  function showBoard(overview) {
    $("sign-in").hidden = true;
    $("sign-out").hidden = false;
    $("board").hidden = false;
    $("token").value = "";
    render(overview);
  }

  async function signIn(event) {
    event.preventDefault();
    const given = $("token").value.trim();
    if (!given) {
      showSignIn("Paste an admin token first.");
      return;
    }
    $("sign-in-button").disabled = true;
    try {
      const overview = await fetchOverview(given);
      token = given;
      sessionStorage.setItem(TOKEN_KEY, given);
      showBoard(overview);
      schedule();
    } catch (error) {
      showSignIn(explain(error));
    } finally {
      $("sign-in-button").disabled = false;
    }
  }

  // -- polling -------------------------------------------------------------------------

  function stopPolling() {
    if (timer !== null) {
      clearTimeout(timer);
      timer = null;
    }
  }

  function schedule() {
    stopPolling();
    if (token === null) {
      return;
    }
    if (document.hidden) {
      setStatus("Paused while this tab is hidden", false);
    } else {
      timer = setTimeout(poll, INTERVAL_MS);
    }
  }

  async function poll() {
    timer = null;
    if (token === null || document.hidden || inFlight !== null) {
      return;
    }
    const asked = token;
    inFlight = fetchOverview(asked);
    try {
      const overview = await inFlight;
      if (token === asked) {
        showBoard(overview);
      }
    } catch (error) {
      if (error.status === 401 || error.status === 403) {
        showSignIn(explain(error));
        return;
      }
      setStatus("Update failed (" + explain(error) + "); retrying", true);
    } finally {
      inFlight = null;
    }
    schedule();
  }

  function visibilityChanged() {
    if (document.hidden) {
      schedule();
    } else if (token !== null) {
      poll();
    }
  }

  // -- rendering -----------------------------------------------------------------------

  function setStatus(text, stale) {
    const status = $("status");
    status.textContent = text;
    status.classList.toggle("stale", stale);
  }

  function time(iso) {
    if (!iso) {
      return { text: "never" };
    }
    const when = new Date(iso);
    return { text: when.toLocaleTimeString(), title: when.toLocaleString() };
  }

  function badge(value) {
    return { text: value || "none", badge: BADGES[value] || "idle" };
  }

  function duration(seconds) {
    const s = Math.floor(seconds);
    const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
    if (d) return d + " d " + h + " h";
    if (h) return h + " h " + m + " min";
    if (m) return m + " min " + (s % 60) + " s";
    return s + " s";
  }

  // A cell is a string/number, or {text, title, badge, className}.
  function cell(row, label, value) {
    const td = document.createElement("td");
    td.dataset.label = label;
    const spec = value !== null && typeof value === "object" ? value : { text: value };
    const text = spec.text === null || spec.text === undefined ? "" : String(spec.text);
    if (spec.badge) {
      const span = document.createElement("span");
      span.className = "badge " + spec.badge;
      span.textContent = text;
      td.append(span);
    } else {
      td.textContent = text;
    }
    if (spec.title) td.title = spec.title;
    if (spec.className) td.classList.add(spec.className);
    row.append(td);
  }

  function fill(id, items, toCells, emptyText) {
    const table = $(id);
    const labels = Array.from(table.tHead.rows[0].cells, (th) => th.textContent);
    const body = table.tBodies[0];
    const rows = items.map((item) => {
      const tr = document.createElement("tr");
      toCells(item).forEach((value, i) => cell(tr, labels[i], value));
      return tr;
    });
    if (!rows.length) {
      const tr = document.createElement("tr");
      const td = document.createElement("td");
      td.colSpan = labels.length;
      td.className = "empty";
      td.textContent = emptyText;
      tr.append(td);
      rows.push(tr);
    }
    body.replaceChildren(...rows);
  }

  function render(overview) {
    const p = overview.process;
    $("fig-uptime").textContent = duration(p.uptime);
    $("fig-users").textContent = String(p.registeredUsers);
    $("fig-browsers").textContent = String(p.browserConnections);
    $("fig-sessions").textContent = String(p.activeSessions);
    $("fig-inflight").textContent = String(p.inFlightCalls);
    $("fig-calls").textContent = String(p.toolCalls);

    fill("users", overview.users, (u) => [
      u.node ? u.userId + " @ " + u.node : u.userId,
      { text: u.browserURL, className: "long" },
      badge(u.browserStatus),
      { text: u.lastError || "none", className: "long" },
      { text: u.activeSessions, className: "num" },
      time(u.lastActivity),
    ], "No browser is registered yet.");

    const cluster = overview.cluster;
    $("cluster-section").hidden = !cluster;
    if (cluster) {
      fill("cluster", cluster.nodes, (n) => [
        n.id + (n.id === cluster.node ? " (this one)" : ""),
        { text: n.url, className: "long" },
        badge(!n.alive ? "down" : n.draining ? "draining" : "up"),
        { text: n.users, className: "num" },
        { text: n.alive ? (n.leaseMsLeft / 1000).toFixed(1) + " s" : "–", className: "num" },
      ], "No process has registered.");
    }

    fill("sessions", overview.sessions.byRevision, (s) => [
      s.transport, s.protocolVersion, { text: s.count, className: "num" },
    ], "No open MCP sessions (stateless 2026-07-28 requests have none).");

    fill("calls", overview.recentCalls, (c) => [
      time(c.time), c.userId, c.tool, badge(c.outcome), { text: c.durationMs + " ms", className: "num" },
    ], "No tool calls yet.");

    fill("errors", overview.recentErrors, (e) => [
      time(e.time), e.userId, badge(e.kind), { text: e.subject, className: "long" }, { text: e.message, className: "long" },
    ], "No errors.");

    fill("changes", overview.browserChanges, (c) => [
      time(c.time), c.userId, c.previous || "new", badge(c.status), { text: c.error || "none", className: "long" },
    ], "No changes seen yet.");

    setStatus("Updated " + new Date(overview.generatedAt).toLocaleTimeString() + " · pid " + p.pid, false);
  }

  // -- start -----------------------------------------------------------------------------

  document.addEventListener("DOMContentLoaded", () => {
    $("sign-in-form").addEventListener("submit", signIn);
    $("sign-out").addEventListener("click", () => showSignIn(""));
    document.addEventListener("visibilitychange", visibilityChanged);
    const saved = sessionStorage.getItem(TOKEN_KEY);
    if (saved) {
      token = saved;
      $("sign-in").hidden = true;
      setStatus("Loading…", false);
      poll();
    }
  });
})();
