// The VPN page: sign in (Microsoft Entra ID via authorization code + PKCE, or a local account),
// start a session, follow its progress, show the config once, extend, stop; admins see every session;
// approvers see the requests waiting for them, with Approve and Deny.
// No library, no build step, no inline script (the CSP forbids it). No API call before sign-in.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const meta = (name) => (document.querySelector(`meta[name="${name}"]`) || {}).content || "";
  const entra = { clientId: meta("vpn-entra-client-id"), authority: meta("vpn-entra-authority"), scope: meta("vpn-entra-scope") };
  const ENDED = ["deleted", "failed", "denied"];
  let token = null;
  let me = null;
  let current = null; // the Location of the session being followed
  let pollTimer = null, adminTimer = null, tickTimer = null, pendingTimer = null;
  let configTried = false;
  let objectUrls = [];

  function say(text) {
    const box = $("alert");
    box.textContent = text || "";
    box.hidden = !text;
  }

  function loadToken() {
    const saved = JSON.parse(sessionStorage.getItem("vpn.token") || "null");
    if (saved && saved.until > Date.now() + 30000) token = saved.token;
  }

  function setToken(value, expiresIn) {
    token = value;
    sessionStorage.setItem("vpn.token", JSON.stringify({ token: value, until: Date.now() + (Number(expiresIn) || 3600) * 1000 }));
  }

  function signOut(message) {
    sessionStorage.removeItem("vpn.token");
    token = null;
    for (const t of [pollTimer, adminTimer, tickTimer, pendingTimer]) clearInterval(t);
    forgetConfig();
    if (message) sessionStorage.setItem("vpn.notice", message);
    location.assign("/");
  }

  async function api(method, path, body) {
    const headers = { Authorization: `Bearer ${token}` };
    const init = { method, headers, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const resp = await fetch(path, init);
    if (resp.status === 401) {
      signOut("Your sign-in has expired. Please sign in again.");
      throw new Error("signed out");
    }
    return resp;
  }

  async function problem(resp) {
    try {
      return (await resp.json()).error || `Error ${resp.status}`;
    } catch (e) {
      return `Error ${resp.status}`;
    }
  }

  // ----- sign-in ----------------------------------------------------------------------------------

  function b64url(buffer) {
    let text = "";
    for (const b of new Uint8Array(buffer)) text += String.fromCharCode(b);
    return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  const redirectUri = () => `${location.origin}/`;
  const entraScope = () => `openid profile ${entra.scope}`;

  async function entraSignIn() {
    const verifier = b64url(crypto.getRandomValues(new Uint8Array(32)));
    const challenge = b64url(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier)));
    const state = b64url(crypto.getRandomValues(new Uint8Array(16)));
    sessionStorage.setItem("vpn.pkce", JSON.stringify({ verifier, state }));
    const params = new URLSearchParams({
      client_id: entra.clientId, response_type: "code", redirect_uri: redirectUri(), response_mode: "query",
      scope: entraScope(), code_challenge: challenge, code_challenge_method: "S256", state,
    });
    location.assign(`${entra.authority}/oauth2/v2.0/authorize?${params}`);
  }

  async function finishEntraSignIn() {
    const q = new URLSearchParams(location.search);
    if (!q.has("code") && !q.has("error")) return;
    history.replaceState(null, "", "/"); // the code never stays in the address bar or history
    const saved = JSON.parse(sessionStorage.getItem("vpn.pkce") || "null");
    sessionStorage.removeItem("vpn.pkce");
    if (q.has("error")) return say(`Microsoft sign-in failed: ${q.get("error_description") || q.get("error")}`);
    if (!saved || saved.state !== q.get("state")) return say("Microsoft sign-in failed (the answer did not match the request). Please try again.");
    const resp = await fetch(`${entra.authority}/oauth2/v2.0/token`, {
      method: "POST",
      body: new URLSearchParams({
        client_id: entra.clientId, grant_type: "authorization_code", code: q.get("code"),
        redirect_uri: redirectUri(), code_verifier: saved.verifier, scope: entraScope(),
      }),
    });
    const data = await resp.json().catch(() => ({}));
    if (!resp.ok || !data.access_token) return say(`Microsoft sign-in failed: ${data.error_description || data.error || resp.status}`);
    setToken(data.access_token, data.expires_in);
  }

  async function localSignIn(event) {
    event.preventDefault();
    const button = event.submitter || $("local").querySelector("button");
    button.disabled = true;
    try {
      const resp = await fetch("/api/login", {
        method: "POST", headers: { "Content-Type": "application/json" }, cache: "no-store",
        body: JSON.stringify({ email: $("email").value, password: $("password").value }),
      });
      if (!resp.ok) return say(await problem(resp));
      $("password").value = "";
      const data = await resp.json();
      setToken(data.token, data.expires_in);
      say("");
      await signedIn();
    } finally {
      button.disabled = false;
    }
  }

  // ----- after sign-in ----------------------------------------------------------------------------

  async function signedIn() {
    const resp = await api("GET", "/api/me");
    $("signin").hidden = true;
    $("signout").hidden = false;
    if (!resp.ok) return say(await problem(resp));
    me = await resp.json();
    $("who").textContent = `Signed in as ${me.email || me.user}${me.role === "admin" ? " (admin)" : ""}`;
    $("who").hidden = false;
    const select = $("region");
    select.replaceChildren(...me.regions.map((r) => new Option(r, r)));
    $("minutes").value = me.session_minutes;
    $("minutes").max = me.max_session_minutes;
    $("limits").textContent = limitsText(me);
    const list = await (await api("GET", "/api/sessions")).json();
    const mine = list.sessions.find((s) => s.owner === undefined || s.owner === me.user);
    if (mine) follow(`/api/sessions/${mine.id}`);
    else $("start").hidden = false;
    if (me.role === "admin") {
      $("admin").hidden = false;
      refreshAdmin();
      adminTimer = setInterval(refreshAdmin, 5000);
    }
    if (me.approver) {
      $("pending").hidden = false;
      refreshPending();
      pendingTimer = setInterval(refreshPending, 5000);
    }
  }

  function limitsText(m) {
    // Each person's own limits: their access policy entry, else the defaults.
    let text = `Your sessions: up to ${m.max_session_minutes} minutes, in ${m.regions.join(", ") || "no region"}.`;
    if (m.approval === "always") text += " Every session needs an approval first.";
    else if (m.approval && m.approval.startsWith("over:")) text += ` Sessions longer than ${m.approval.slice(5)} minutes need an approval first.`;
    return text;
  }

  async function start(event) {
    event.preventDefault();
    const button = $("start-button");
    button.disabled = true;
    try {
      const body = { region: $("region").value, minutes: Number($("minutes").value) };
      if ($("reason").value.trim()) body.reason = $("reason").value.trim();
      const resp = await api("POST", "/api/sessions", body);
      if (resp.status !== 202) return say(await problem(resp));
      say("");
      follow(resp.headers.get("Location"));
    } finally {
      button.disabled = false;
    }
  }

  function follow(location) {
    current = location;
    configTried = false;
    forgetConfig();
    $("config-gone").hidden = true;
    $("start").hidden = true;
    $("session").hidden = false;
    clearInterval(pollTimer);
    poll();
    pollTimer = setInterval(poll, 1000);
  }

  async function poll() {
    if (!current) return;
    const resp = await api("GET", current);
    if (!resp.ok) return say(await problem(resp));
    const s = await resp.json();
    render(s);
    if (s.config_ready && !configTried) {
      configTried = true;
      await fetchConfig(s);
    }
    if (ENDED.includes(s.state)) {
      clearInterval(pollTimer);
      forgetConfig();
      current = null;
      $("start").hidden = false;
    }
  }

  function render(s) {
    $("s-id").textContent = s.id;
    $("s-state").textContent = s.state;
    $("s-region").textContent = s.region;
    $("s-endpoint").textContent = s.endpoint || "-";
    if (s.state === "failed") $("progress").textContent = `Failed: ${s.error}`;
    else if (s.state === "denied") $("progress").textContent = `Not granted: ${s.end_reason}`;
    else if (s.state === "awaiting_approval") $("progress").textContent = `Waiting for an approval${s.asked ? ` (asked: ${s.asked})` : ""}.`;
    else $("progress").textContent = s.progress;
    $("s-approval").textContent = s.state === "awaiting_approval" ? "waiting" : s.decided_by ? `${s.state === "denied" ? "decided" : "approved"} by ${s.decided_by}` : "-";
    $("extend").disabled = s.state !== "ready";
    $("stop").disabled = ENDED.includes(s.state) || s.state === "expiring";
    clearInterval(tickTimer);
    if (s.state === "ready" && typeof s.time_left === "number") {
      const ends = Date.now() + s.time_left * 1000;
      const tick = () => {
        const left = Math.max(0, Math.round((ends - Date.now()) / 1000));
        $("s-left").textContent = `${Math.floor(left / 60)} min ${String(left % 60).padStart(2, "0")} s`;
      };
      tick();
      tickTimer = setInterval(tick, 1000);
    } else {
      $("s-left").textContent = s.state === "expiring" ? "ending" : ENDED.includes(s.state) ? "-" : `${s.minutes} min once ready`;
    }
  }

  async function fetchConfig(s) {
    // The QR first: taking the file erases the QR (both hold the same secret).
    const png = await api("GET", `${current}/config.png`);
    if (png.ok) {
      const url = URL.createObjectURL(await png.blob());
      objectUrls.push(url);
      $("qr").src = url;
      $("qr").hidden = false;
    } else {
      $("qr").hidden = true;
    }
    const conf = await api("GET", `${current}/config`);
    if (conf.ok) {
      const text = await conf.text();
      const url = URL.createObjectURL(new Blob([text], { type: "text/plain" }));
      objectUrls.push(url);
      $("download").href = url;
      $("download").download = `vpn-${s.id}.conf`.slice(0, 20);
      $("download").hidden = false;
    } else {
      $("download").hidden = true;
    }
    if (png.ok || conf.ok) $("config").hidden = false;
    else $("config-gone").hidden = false;
  }

  function forgetConfig() {
    for (const url of objectUrls) URL.revokeObjectURL(url);
    objectUrls = [];
    $("config").hidden = true;
    $("qr").removeAttribute("src");
    $("download").removeAttribute("href");
  }

  async function extend() {
    const minutes = Number($("extend-minutes").value);
    const resp = await api("POST", `${current}/extend`, { minutes });
    if (!resp.ok) return say(await problem(resp));
    say("");
    render(await resp.json());
  }

  async function stop(location) {
    const resp = await api("DELETE", location);
    if (!resp.ok) return say(await problem(resp));
    say("");
    if (location === current) render(await resp.json());
    if (me && me.role === "admin") refreshAdmin();
  }

  async function refreshAdmin() {
    const resp = await api("GET", "/api/sessions");
    if (!resp.ok) return;
    const rows = (await resp.json()).sessions.map((s) => {
      const tr = document.createElement("tr");
      const left = typeof s.time_left === "number" ? `${Math.round(s.time_left / 60)} min` : s.state;
      for (const text of [s.id, s.owner_label || s.owner, s.region, s.state, left, (s.cost || 0).toFixed(2)]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.append(td);
      }
      const td = document.createElement("td");
      if (s.state !== "expiring") {
        const b = document.createElement("button");
        b.type = "button";
        b.className = "danger";
        b.textContent = "Stop";
        b.setAttribute("aria-label", `Stop session ${s.id} of ${s.owner_label || s.owner}`);
        b.addEventListener("click", () => stop(`/api/sessions/${s.id}`));
        td.append(b);
      }
      tr.append(td);
      return tr;
    });
    $("admin-rows").replaceChildren(...rows);
  }

  async function decide(id, verb) {
    let body = {};
    if (verb === "deny") {
      const reason = window.prompt(`Deny request ${id}: a reason for the requester (optional)`, "");
      if (reason === null) return;
      body = { reason: reason.slice(0, 200) };
    }
    const resp = await api("POST", `/api/sessions/${id}/${verb}`, body);
    say(resp.ok ? "" : await problem(resp));
    refreshPending();
  }

  async function refreshPending() {
    const resp = await api("GET", "/api/sessions?state=awaiting_approval");
    if (!resp.ok) return;
    const waiting = (await resp.json()).sessions.filter((s) => s.owner_label !== undefined);
    const rows = waiting.map((s) => {
      const tr = document.createElement("tr");
      const by = s.decide_by ? new Date(s.decide_by).toLocaleTimeString() : "-";
      for (const text of [s.owner_label, `${s.minutes} min in ${s.region} (${s.id})`, s.reason || "-", by]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.append(td);
      }
      const td = document.createElement("td");
      const buttons = document.createElement("div");
      buttons.className = "row-actions";
      td.append(buttons);
      for (const [verb, label, cls] of [["approve", "Approve", ""], ["deny", "Deny", "danger"]]) {
        const b = document.createElement("button");
        b.type = "button";
        b.className = cls;
        b.textContent = label;
        b.setAttribute("aria-label", `${label} request ${s.id} of ${s.owner_label}`);
        b.addEventListener("click", () => decide(s.id, verb));
        buttons.append(b);
      }
      tr.append(td);
      return tr;
    });
    $("pending-rows").replaceChildren(...rows);
    $("pending-none").hidden = rows.length > 0;
  }

  async function main() {
    $("local").addEventListener("submit", localSignIn);
    $("start-form").addEventListener("submit", start);
    $("extend").addEventListener("click", extend);
    $("stop").addEventListener("click", () => current && stop(current));
    $("signout").addEventListener("click", () => signOut());
    const notice = sessionStorage.getItem("vpn.notice");
    sessionStorage.removeItem("vpn.notice");
    if (notice) say(notice);
    if (entra.clientId && entra.authority) {
      $("entra-box").hidden = false;
      $("entra").addEventListener("click", entraSignIn);
      await finishEntraSignIn();
    }
    loadToken();
    if (token) await signedIn();
  }

  main().catch((e) => {
    if (String(e && e.message) !== "signed out") say(`Something went wrong: ${e && e.message}`);
  });
})();
