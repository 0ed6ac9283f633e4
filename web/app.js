// The VPN page: sign in (Microsoft Entra ID via authorization code + PKCE, or a local account),
// start a session, follow its progress, show the config once, extend, stop; admins see every session;
// approvers see the requests waiting for them, with Approve and Deny.
// No library, no build step, no inline script (the CSP forbids it). No API call before sign-in.
// config.json next to this page says where the API is and how to sign in: the bot answers it from
// its settings, a static host serves the one the deployment wrote (docs/deploy.md). Without one, the
// API is on this origin and only local accounts sign in.
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const ENDED = ["deleted", "failed", "denied"];
  const TOKEN = "vpn.token", KEPT = "vpn.config", PKCE = "vpn.pkce";
  let settings = { api: "", entra: null };
  let token = null;
  let me = null;
  let current = null; // the path of the session being followed (/api/sessions/<id>)
  let lastSession = null; // its latest view
  let pollTimer = null, adminTimer = null, tickTimer = null, pendingTimer = null;
  let taking = false; // a config request is under way (polls overlap)
  let restart = null; // "start over": what to start once the stopped session has ended
  let objectUrls = [];
  let shown = { png: false, conf: false };
  const blocked = []; // what the CSP refused, to name that mistake rather than "Failed to fetch"

  // ----- messages ---------------------------------------------------------------------------------

  // An answer appears next to what caused it, and in view: on a phone the top of the page is far away.
  function tell(id, text) {
    const box = $(id);
    const changed = box.textContent !== (text || "");
    box.textContent = text || "";
    box.hidden = !text;
    if (text && changed) box.scrollIntoView({ block: "nearest" });
  }

  function say(text) {
    tell("alert", text);
  }

  async function problem(resp) {
    try {
      return (await resp.json()).error || `Error ${resp.status}`;
    } catch (e) {
      return `Error ${resp.status}`;
    }
  }

  function oops(e) {
    if (String(e && e.message) !== "signed out") say(`Something went wrong: ${e && e.message}`);
  }

  const guard = (fn) => (...args) => fn(...args).catch(oops);

  // Why the API refused the token (the 401's `reason`, bot/channels/web/token_refusals.py), in words
  // a person (or their admin) can act on. Most of them are a setup mistake, not the person's.
  const ROUTINE = ["expired", "account_changed", "no_token"];
  const REASON_WORDS = {
    no_token: "You are not signed in.",
    expired: "Your sign-in has expired.",
    account_changed: "Your account was changed (a new password, or it was removed).",
    not_yet_valid: "The service says the sign-in is not valid yet: the clock of this computer or of the server is wrong.",
    malformed: "The service could not read the sign-in token.",
    bad_signature: "The service could not verify the sign-in token (was VPN_LOCAL_AUTH_SECRET changed?).",
    unknown_key: "The token is signed with a key the Microsoft tenant does not publish (does the API app registration use its own signing key?).",
    wrong_tenant: "Microsoft signed you in to another tenant than the one this service trusts (VPN_ENTRA_TENANT_ID).",
    wrong_issuer: "The token's issuer is not the tenant's v2.0 issuer (check VPN_ENTRA_AUTHORITY and the tenant).",
    wrong_audience: "The token is for another API: VPN_ENTRA_API_AUDIENCE must be the API app's client id, and the page must ask for that API's access_as_user scope.",
    v1_token: "Microsoft issued a v1.0 token: in the API app registration's manifest, set requestedAccessTokenVersion (accessTokenAcceptedVersion) to 2.",
    missing_scope: "The token lacks the access_as_user scope: give the page app the API's access_as_user permission, with consent.",
    entra_off: "This service does not accept Microsoft sign-in (VPN_ENTRA_TENANT_ID is not set on it), but this page's config.json offers it.",
  };

  // ----- config.json: where the API is, how to sign in --------------------------------------------

  async function loadSettings() {
    const resp = await fetch("config.json", { cache: "no-cache" });
    if (resp.status === 404) return; // none: this origin, local accounts
    if (!resp.ok) throw new Error(`config.json answered ${resp.status}`);
    const data = await resp.json();
    const e = data && data.entra;
    settings = {
      api: String((data && data.api) || "").replace(/\/+$/, ""),
      entra: e && e.client_id && e.authority && e.scope
        ? { clientId: String(e.client_id), authority: String(e.authority).replace(/\/+$/, ""), scope: String(e.scope) }
        : null,
    };
  }

  // ----- the token (this tab only) ----------------------------------------------------------------

  function storedToken() {
    try {
      return JSON.parse(sessionStorage.getItem(TOKEN) || "null");
    } catch (e) {
      return null;
    }
  }

  function loadToken() {
    const saved = storedToken();
    token = saved && saved.until > Date.now() + 30000 ? saved.token : null;
    return saved;
  }

  function setToken(value, expiresIn, refresh) {
    token = value;
    const until = Date.now() + (Number(expiresIn) || 3600) * 1000;
    sessionStorage.setItem(TOKEN, JSON.stringify({ token: value, until, refresh: refresh || null }));
  }

  function dropToken() {
    sessionStorage.removeItem(TOKEN);
    token = null;
  }

  function send(method, path, body, accept) {
    const headers = { Authorization: `Bearer ${token}` };
    if (accept) headers.Accept = accept;
    const init = { method, headers, cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    return fetch(settings.api + path, init);
  }

  async function reasonOf(resp) {
    try {
      return (await resp.json()).reason || "malformed";
    } catch (e) {
      return "malformed";
    }
  }

  // Every API call: an expired Microsoft token is renewed once, silently; any other 401 asks the
  // person to sign in again and leaves the page as it is.
  async function api(method, path, body, accept) {
    if (!token) throw new Error("signed out");
    const used = token;
    let resp = await send(method, path, body, accept);
    if (resp.status !== 401) return resp;
    let reason = await reasonOf(resp);
    if (reason === "expired" && token && (token !== used || (await renew()))) {
      resp = await send(method, path, body, accept);
      if (resp.status !== 401) return resp;
      reason = await reasonOf(resp);
    }
    needSignIn(reason);
    throw new Error("signed out");
  }

  // ----- signing in again without losing the page -------------------------------------------------

  // A refused token: say why and offer the sign-in, and keep everything on screen, above all the
  // config, which the server will not hand out again.
  function needSignIn(reason) {
    const asked = !$("reauth").hidden;
    dropToken();
    stopPolling();
    if (asked) return; // the first reason stands
    const routine = ROUTINE.includes(reason);
    $("reauth-title").textContent = routine ? "Sign in again." : "Sign-in refused.";
    $("reauth-text").textContent = (REASON_WORDS[reason] || REASON_WORDS.malformed) + (routine ? "" : " This needs a change in the setup: tell your admin.");
    $("reauth-kept").hidden = !current;
    $("reauth").hidden = false;
    $("signin").hidden = false;
  }

  function toSignIn() {
    $("signin").scrollIntoView({ block: "start" });
    (settings.entra ? $("entra") : $("email")).focus();
  }

  function stopPolling() {
    clearInterval(pollTimer);
    clearInterval(adminTimer);
    clearInterval(pendingTimer);
    pollTimer = adminTimer = null;
  }

  // ----- Microsoft Entra ID: authorization code + PKCE, the answer in the fragment -----------------

  function b64url(buffer) {
    let text = "";
    for (const b of new Uint8Array(buffer)) text += String.fromCharCode(b);
    return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  const here = () => new URL(".", location.href).href; // this page's address (the redirect URI), no query or fragment
  const entraScope = () => `openid profile offline_access ${settings.entra.scope}`;

  async function entraSignIn() {
    const verifier = b64url(crypto.getRandomValues(new Uint8Array(32)));
    const challenge = b64url(await crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier)));
    const state = b64url(crypto.getRandomValues(new Uint8Array(16)));
    sessionStorage.setItem(PKCE, JSON.stringify({ verifier, state }));
    const params = new URLSearchParams({
      client_id: settings.entra.clientId, response_type: "code", redirect_uri: here(), response_mode: "fragment",
      scope: entraScope(), code_challenge: challenge, code_challenge_method: "S256", state,
    });
    location.assign(`${settings.entra.authority}/oauth2/v2.0/authorize?${params}`);
  }

  // The code comes back in the fragment, which the browser never sends to a server (no proxy log
  // holds it); it leaves the address bar and the history at once.
  async function finishEntraSignIn() {
    const answer = new URLSearchParams(location.hash.slice(1));
    if (!answer.has("code") && !answer.has("error")) return;
    history.replaceState(null, "", here());
    const saved = JSON.parse(sessionStorage.getItem(PKCE) || "null");
    sessionStorage.removeItem(PKCE);
    if (answer.has("error")) return say(`Microsoft sign-in failed: ${answer.get("error_description") || answer.get("error")}`);
    if (!saved || saved.state !== answer.get("state")) return say("Microsoft sign-in failed (the answer did not match the request). Please try again.");
    const data = await entraToken({ grant_type: "authorization_code", code: answer.get("code"), redirect_uri: here(), code_verifier: saved.verifier });
    if (data.problem) return say(data.problem);
    setToken(data.access_token, data.expires_in, data.refresh_token);
  }

  // One request to the token endpoint: the tokens, or {problem} in words.
  async function entraToken(fields) {
    const url = `${settings.entra.authority}/oauth2/v2.0/token`;
    let resp;
    try {
      resp = await fetch(url, { method: "POST", body: new URLSearchParams({ client_id: settings.entra.clientId, scope: entraScope(), ...fields }) });
    } catch (e) {
      return { problem: await unreadable(url, e) };
    }
    const data = await resp.json().catch(() => ({}));
    if (!resp.ok || !data.access_token) return { problem: `Microsoft sign-in failed: ${data.error_description || data.error || resp.status}` };
    return data;
  }

  // A request that failed outright: this page's CSP refused it, or the answer came without CORS,
  // which is what Entra does when the redirect URI is registered as "Web" instead of as an SPA.
  async function unreadable(url, error) {
    const origin = new URL(url).origin;
    await new Promise((resolve) => setTimeout(resolve, 50)); // the CSP's report arrives just after
    if (blocked.some((u) => u.startsWith(origin))) {
      return `Microsoft sign-in could not finish: this page's Content-Security-Policy does not allow ${origin} (connect-src); the host's configuration must list it.`;
    }
    return `Microsoft sign-in could not finish: the browser may not read the answer of ${origin} (${error.message}). ` +
      `The redirect URI ${here()} must be registered as a Single-page application in the page's app registration ` +
      `(Authentication), not as "Web". (Or the network is down.)`;
  }

  // A fresh access token from the refresh token (Entra gives one to single-page apps that ask for
  // offline_access), shared by every call that is waiting for it.
  let renewing = null;
  function renew() {
    const saved = storedToken();
    if (!settings.entra || !saved || !saved.refresh) return Promise.resolve(false);
    if (!renewing) {
      renewing = entraToken({ grant_type: "refresh_token", refresh_token: saved.refresh })
        .then((data) => {
          if (data.problem) return false;
          setToken(data.access_token, data.expires_in, data.refresh_token || saved.refresh);
          return true;
        })
        .finally(() => {
          renewing = null;
        });
    }
    return renewing;
  }

  // ----- local accounts ---------------------------------------------------------------------------

  async function localSignIn(event) {
    event.preventDefault();
    const button = event.submitter || $("local").querySelector("button");
    button.disabled = true;
    try {
      const resp = await fetch(settings.api + "/api/login", {
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
    $("reauth").hidden = true;
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
    else {
      forgetConfig(); // kept for a session that has ended, or for someone else
      $("start").hidden = false;
    }
    if (me.role === "admin") {
      $("admin").hidden = false;
      guard(refreshAdmin)();
      clearInterval(adminTimer);
      adminTimer = setInterval(guard(refreshAdmin), 5000);
      showReports();
    }
    if (me.approver) {
      $("pending").hidden = false;
      guard(refreshPending)();
      clearInterval(pendingTimer);
      pendingTimer = setInterval(guard(refreshPending), 5000);
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
      await startSession($("region").value, Number($("minutes").value), $("reason").value.trim());
    } finally {
      button.disabled = false;
    }
  }

  async function startSession(region, minutes, reason) {
    const body = { region, minutes };
    if (reason) body.reason = reason.slice(0, 200);
    const resp = await api("POST", "/api/sessions", body);
    if (resp.status !== 202) return tell("start-alert", await problem(resp));
    tell("start-alert", "");
    follow(resp.headers.get("Location"));
  }

  function follow(path) {
    const kept = keptConfig();
    if (!kept || kept.path !== path) forgetConfig(); // a config kept for another session works no more
    current = path;
    $("start").hidden = true;
    $("session").hidden = false;
    showConfig();
    clearInterval(pollTimer);
    guard(poll)();
    pollTimer = setInterval(guard(poll), 1000);
  }

  async function poll() {
    if (!current || !token) return;
    const path = current;
    const resp = await api("GET", path);
    if (path !== current) return;
    if (resp.status === 404) return ended();
    if (!resp.ok) return tell("session-alert", await problem(resp));
    const s = await resp.json();
    render(s);
    if (ENDED.includes(s.state)) return ended();
    await takeConfig(s);
  }

  function ended() {
    clearInterval(pollTimer);
    pollTimer = null;
    forgetConfig(); // the secret leaves the page with the session
    current = null;
    $("start").hidden = false;
    if (restart) {
      const { region, minutes } = restart;
      restart = null;
      guard(startSession)(region, minutes);
    }
  }

  const clock = (iso) => new Date(iso).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });

  // The status line: the engine's progress, but a ready session's end time from the session itself
  // (an Extend moves it; the progress line would still say the old one), and an ended session's end
  // from the session too: the "has ended" notice follows the state, so the first poll that sees the
  // end (the last one) may come before it, and a replica killed in between never sends it.
  function statusLine(s) {
    if (s.state === "deleted") return `Your VPN session ${s.id} has ended${s.end_reason ? ` (${s.end_reason})` : ""}.`;
    if (s.state === "failed") return `Failed: ${s.error}`;
    if (s.state === "denied") return `Not granted: ${s.end_reason}`;
    if (s.state === "awaiting_approval") return `Waiting for an approval${s.asked ? ` (asked: ${s.asked})` : ""}.`;
    if (s.state === "ready" && s.expires_at) return `Your VPN is ready (session ${s.id}). It ends at ${clock(s.expires_at)}.`;
    return s.progress;
  }

  function render(s) {
    lastSession = s;
    $("s-id").textContent = s.id;
    $("s-state").textContent = s.state === "deleted" ? "ended" : s.state;  // "deleted" is the store's word; a person reads "ended"
    $("s-region").textContent = s.region;
    $("s-endpoint").textContent = s.endpoint || "-";
    $("s-tunnel").textContent = s.tunnel || "-"; // "connected — handshake 20 s ago, ↓ 12.4 MB ↑ 3.1 MB", or "not connected yet"
    $("progress").textContent = statusLine(s);
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

  // ----- the config: handed out once by the server, kept for the life of this tab ------------------
  // sessionStorage survives a reload and the round trip to Microsoft sign-in, not the tab, and only
  // this origin's own script (CSP: script-src 'self') can read it. Kept: {path, name, png, conf},
  // each part the data, null (the server said it is gone) or absent (not asked yet).

  function keptConfig() {
    try {
      return JSON.parse(sessionStorage.getItem(KEPT) || "null");
    } catch (e) {
      return null;
    }
  }

  function keepConfig(kept) {
    sessionStorage.setItem(KEPT, JSON.stringify(kept));
  }

  async function takeConfig(s) {
    let kept = keptConfig();
    if (!kept || kept.path !== current) kept = { path: current, name: `vpn-${s.id}.conf`.slice(0, 20) };
    if ((s.config_ready || s.state === "ready") && kept.conf === undefined && !taking) {
      taking = true;
      try {
        // The QR first: taking the file erases the QR (both hold the same secret). Each part is
        // kept the moment it arrives, so a reload or a sign-in in between loses nothing.
        if (kept.png === undefined) {
          const png = await takePart(`${kept.path}/config.png`);
          if (png !== undefined) kept.png = png === null ? null : b64(await png.arrayBuffer());
          keepConfig(kept);
        }
        if (kept.png !== undefined) {
          const conf = await takePart(`${kept.path}/config`);
          if (conf !== undefined) kept.conf = conf === null ? null : await conf.text();
          keepConfig(kept);
        }
      } finally {
        taking = false;
      }
    }
    showConfig();
  }

  // The answer, null when the server no longer holds it (410), undefined to ask again later.
  async function takePart(path) {
    const resp = await api("GET", path);
    if (resp.status === 410) return null;
    return resp.ok ? resp : undefined;
  }

  function b64(buffer) {
    let text = "";
    for (const b of new Uint8Array(buffer)) text += String.fromCharCode(b);
    return btoa(text);
  }

  function objectUrl(blob) {
    const url = URL.createObjectURL(blob);
    objectUrls.push(url);
    return url;
  }

  // What the page holds for the session on screen, or the truth when it holds nothing.
  function showConfig() {
    const kept = keptConfig();
    const mine = kept && kept.path === current ? kept : null;
    const png = mine && mine.png, conf = mine && mine.conf;
    if (png && !shown.png) {
      $("qr").src = objectUrl(new Blob([Uint8Array.from(atob(png), (c) => c.charCodeAt(0))], { type: "image/png" }));
      shown.png = true;
    }
    if (conf && !shown.conf) {
      $("download").href = objectUrl(new Blob([conf], { type: "text/plain" }));
      $("download").download = mine.name;
      shown.conf = true;
    }
    $("qr").hidden = !png;
    $("download").hidden = !conf;
    $("config").hidden = !(png || conf);
    $("config-gone").hidden = !(mine && mine.png === null && mine.conf === null);
  }

  function forgetConfig() {
    sessionStorage.removeItem(KEPT);
    for (const url of objectUrls) URL.revokeObjectURL(url);
    objectUrls = [];
    shown = { png: false, conf: false };
    $("config").hidden = true;
    $("config-gone").hidden = true;
    $("qr").removeAttribute("src");
    $("download").removeAttribute("href");
  }

  // "Start over": the only way to a new config while a session runs is a new session.
  async function startOver() {
    if (!current || !lastSession) return;
    if (!confirm(`Start over? This stops session ${lastSession.id} (a config of it that you still have stops working) and starts a new one.`)) return;
    restart = { region: lastSession.region, minutes: lastSession.minutes };
    if (!(await stop(current, "session-alert"))) restart = null;
  }

  // ----- extend, stop, the admin list -------------------------------------------------------------

  async function extend() {
    const minutes = Number($("extend-minutes").value);
    const resp = await api("POST", `${current}/extend`, { minutes });
    if (!resp.ok) return tell("session-alert", await problem(resp));
    tell("session-alert", "");
    render(await resp.json());
  }

  async function stop(path, alertId) {
    const resp = await api("DELETE", path);
    if (!resp.ok) {
      tell(alertId, await problem(resp));
      return false;
    }
    tell(alertId, "");
    if (path === current) render(await resp.json());
    if (me && me.role === "admin") refreshAdmin().catch(oops);
    return true;
  }

  async function refreshAdmin() {
    const resp = await api("GET", "/api/sessions");
    if (!resp.ok) return;
    const rows = (await resp.json()).sessions.map((s) => {
      const tr = document.createElement("tr");
      const left = typeof s.time_left === "number" ? `${Math.round(s.time_left / 60)} min` : s.state;
      const cells = [["Session", s.id], ["Owner", s.owner_label || s.owner], ["Region", s.region], ["State", s.state], ["Left", left], ["Cost", (s.cost || 0).toFixed(2)], ["Tunnel", s.tunnel || "-"]];
      for (const [label, text] of cells) {
        const td = document.createElement("td");
        td.dataset.label = label; // a phone shows each row as a card of labelled lines (style.css)
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
        b.addEventListener("click", guard(() => stop(`/api/sessions/${s.id}`, "admin-alert")));
        td.append(b);
      }
      tr.append(td);
      return tr;
    });
    $("admin-rows").replaceChildren(...rows);
  }

  function signOut() {
    const kept = keptConfig();
    if (kept && (kept.png || kept.conf) && !confirm("Sign out? The config on this page is the only copy: it will be forgotten.")) return;
    dropToken();
    forgetConfig();
    stopPolling();
    location.assign(here());
  }

  // ----- start ------------------------------------------------------------------------------------

  // ----- approvals: the requests waiting for this approver ------------------------------------------

  async function decide(id, verb) {
    let body = {};
    if (verb === "deny") {
      const reason = window.prompt(`Deny request ${id}: a reason for the requester (optional)`, "");
      if (reason === null) return;
      body = { reason: reason.slice(0, 200) };
    }
    const resp = await api("POST", `/api/sessions/${id}/${verb}`, body);
    tell("pending-alert", resp.ok ? "" : await problem(resp));
    guard(refreshPending)();
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

  // ----- admins: usage (a chart per day, a row per user) and the audit log --------------------------
  // Inline SVG drawn with DOM calls (no library; the CSP allows no inline style: colours are classes).

  const SVG = "http://www.w3.org/2000/svg";
  const day = (d) => d.toISOString().slice(0, 10);
  const mb = (n) => (n >= 1e9 ? `${(n / 1e9).toFixed(2)} GB` : `${(n / 1e6).toFixed(1)} MB`);
  const dollars = (n) => `$${n < 1 ? n.toFixed(4) : n.toFixed(2)}`;

  function svg(name, attrs, text) {
    const el = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
    if (text !== undefined) el.textContent = text;
    return el;
  }

  function barChart(box, days, value, format, cls) {
    const W = 600, H = 170, left = 72, bottom = 22, top = 12;
    const max = Math.max(...days.map(value), 0);
    const scale = max > 0 ? (H - top - bottom) / max : 0;
    const step = (W - left) / Math.max(days.length, 1);
    box.setAttribute("viewBox", `0 0 ${W} ${H}`);
    const parts = [svg("line", { x1: left, y1: H - bottom, x2: W, y2: H - bottom, class: "axis-line" }),
      svg("text", { x: left - 6, y: top + 8, class: "axis", "text-anchor": "end" }, format(max)),
      svg("text", { x: left - 6, y: H - bottom, class: "axis", "text-anchor": "end" }, format(0))];
    days.forEach((d, i) => {
      const h = value(d) * scale;
      const bar = svg("rect", { x: left + i * step + step * 0.15, y: H - bottom - h, width: step * 0.7, height: Math.max(h, 0), class: cls });
      bar.append(svg("title", {}, `${d.day}: ${format(value(d))}`));
      parts.push(bar);
      if (i === 0 || i === days.length - 1 || (days.length > 8 && i === Math.floor(days.length / 2))) {
        const anchor = i === 0 ? "start" : i === days.length - 1 ? "end" : "middle";
        const x = i === 0 ? left + i * step : i === days.length - 1 ? W : left + i * step + step / 2;
        parts.push(svg("text", { x, y: H - 4, class: "axis", "text-anchor": anchor }, d.day.slice(5)));
      }
    });
    box.replaceChildren(...parts);
  }

  function cells(tr, pairs) {
    for (const [label, text] of pairs) {
      const td = document.createElement("td");
      td.dataset.label = label;
      td.textContent = text;
      tr.append(td);
    }
    return tr;
  }

  function usageQuery() {
    const q = new URLSearchParams({ from: $("usage-from").value, to: $("usage-to").value });
    if ($("usage-user").value.trim()) q.set("user", $("usage-user").value.trim());
    return `/api/usage?${q}`;
  }

  async function refreshUsage() {
    const resp = await api("GET", usageQuery());
    if (!resp.ok) return tell("usage-alert", await problem(resp));
    tell("usage-alert", "");
    const r = await resp.json();
    const t = r.totals;
    $("usage-totals").textContent = `${t.sessions} session(s), ${Math.round(t.minutes)} min in use, ${dollars(t.cost)}, ↓ ${mb(t.bytes_in)} ↑ ${mb(t.bytes_out)}.`;
    barChart($("chart-sessions"), r.days, (d) => d.sessions, (n) => String(Math.round(n)), "bar-sessions");
    barChart($("chart-cost"), r.days, (d) => d.cost, dollars, "bar-cost");
    $("usage-rows").replaceChildren(...r.users.map((u) => cells(document.createElement("tr"), [
      ["User", u.label || u.user], ["Sessions", String(u.sessions)], ["Minutes", String(Math.round(u.minutes))],
      ["Cost", dollars(u.cost)], ["Down", mb(u.bytes_in)], ["Up", mb(u.bytes_out)]])));
  }

  async function downloadUsage() {
    const resp = await api("GET", usageQuery(), undefined, "text/csv");
    if (!resp.ok) return tell("usage-alert", await problem(resp));
    const url = URL.createObjectURL(await resp.blob());
    const a = document.createElement("a");
    a.href = url;
    a.download = `vpn-usage-${$("usage-from").value}-${$("usage-to").value}.csv`;
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  async function refreshAudit() {
    const q = new URLSearchParams({ limit: "100" });
    for (const [id, key] of [["audit-user", "user"], ["audit-from", "from"], ["audit-to", "to"]]) {
      if ($(id).value.trim()) q.set(key, $(id).value.trim());
    }
    const resp = await api("GET", `/api/audit?${q}`);
    if (!resp.ok) return tell("audit-alert", await problem(resp));
    tell("audit-alert", "");
    const entries = (await resp.json()).entries;
    $("audit-rows").replaceChildren(...entries.map((e) => {
      const tr = cells(document.createElement("tr"), [
        ["Time", new Date(e.at).toLocaleString([], { dateStyle: "short", timeStyle: "short" })], ["Who", e.email || e.user],
        ["Command", e.command], ["Allowed", e.allowed ? "yes" : "no"], ["Reason", e.reason + (e.count > 1 ? ` (×${e.count})` : "")]]);
      if (!e.allowed) tr.className = "refused";
      return tr;
    }));
  }

  function showReports() {
    const today = new Date();
    if (!$("usage-to").value) $("usage-to").value = day(today);
    if (!$("usage-from").value) $("usage-from").value = day(new Date(today.getTime() - 29 * 86400000));
    $("usage").hidden = false;
    $("audit").hidden = false;
    guard(refreshUsage)();
    guard(refreshAudit)();
  }

  async function main() {
    document.addEventListener("securitypolicyviolation", (e) => blocked.push(String(e.blockedURI)));
    $("local").addEventListener("submit", guard(localSignIn));
    $("start-form").addEventListener("submit", guard(start));
    $("extend").addEventListener("click", guard(extend));
    $("stop").addEventListener("click", guard(async () => current && stop(current, "session-alert")));
    $("start-over").addEventListener("click", guard(startOver));
    $("signout").addEventListener("click", () => signOut());
    $("reauth-button").addEventListener("click", toSignIn);
    $("usage-form").addEventListener("submit", (e) => { e.preventDefault(); guard(refreshUsage)(); });
    $("usage-csv").addEventListener("click", guard(downloadUsage));
    $("audit-form").addEventListener("submit", (e) => { e.preventDefault(); guard(refreshAudit)(); });
    await loadSettings();
    if (settings.entra) {
      $("entra-box").hidden = false;
      $("entra").addEventListener("click", guard(entraSignIn));
      await finishEntraSignIn();
    }
    if (!token) {
      const saved = loadToken();
      if (!token && saved && saved.refresh) await renew();
    }
    if (token) return signedIn();
    const kept = keptConfig();
    if (kept && (kept.png || kept.conf)) {
      // Signed out (the sign-in ended while the tab was away), with a config kept: show it, and ask.
      current = kept.path;
      $("session").hidden = false;
      showConfig();
      needSignIn("expired");
    }
  }

  main().catch(oops);
})();
