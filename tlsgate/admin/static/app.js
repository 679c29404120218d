// tlsgate dashboard: plain JavaScript over the admin API (/api/v1). No build step.
// Every value from the API is put in the page with textContent (client ids, user names and
// certificate subjects come from devices: never trust them as HTML).
"use strict";

const TOKEN_KEY = "tlsgate.token";
const REFRESH_MS = 5000;
const PAGE_SIZE = 50;
const state = { page: 1, filters: {}, timer: null };

const $ = (id) => document.getElementById(id);

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

class Unauthorized extends Error {}

async function api(method, path, body) {
  const headers = { "Accept": "application/json" };
  const t = token();
  if (t) headers["Authorization"] = "Bearer " + t;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  if (resp.status === 401) throw new Unauthorized("wrong or missing token");
  let doc = null;
  try { doc = await resp.json(); } catch (e) { doc = null; }
  if (!resp.ok && !(method === "POST" && path === "/api/v1/reload" && resp.status === 422)) {
    throw new Error((doc && doc.message) || (method + " " + path + ": HTTP " + resp.status));
  }
  return doc;
}

// ---------------------------------------------------------------------------------- helpers
function cell(tr, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined || text === "" ? "–" : String(text);
  if (cls) td.className = cls;
  tr.appendChild(td);
  return td;
}

function fill(tableId, rows, render, emptyText) {
  const tbody = $(tableId).querySelector("tbody");
  tbody.replaceChildren();
  if (!rows.length) {
    const tr = document.createElement("tr");
    const td = cell(tr, emptyText || "none", "muted");
    td.colSpan = $(tableId).querySelectorAll("thead th").length;
    tbody.appendChild(tr);
    return;
  }
  for (const row of rows) {
    const tr = document.createElement("tr");
    render(tr, row);
    tbody.appendChild(tr);
  }
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}

function duration(s) {
  if (s === null || s === undefined) return "–";
  s = Math.floor(s);
  const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600),
        m = Math.floor(s % 3600 / 60), sec = s % 60;
  if (d) return d + "d " + h + "h";
  if (h) return h + "h " + m + "m";
  if (m) return m + "m " + sec + "s";
  return sec + "s";
}

function say(text, isError) {
  const el = $("message");
  el.textContent = text || "";
  el.className = "message" + (isError ? " error" : "");
}

function showLogin(errorText) {
  $("main").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = errorText || "";
  $("token-input").focus();
}

function showMain() {
  $("login").hidden = true;
  $("main").hidden = false;
}

// ---------------------------------------------------------------------------------- views
function renderStatus(st) {
  $("s-node").textContent = st.node;
  $("s-version").textContent = st.version;
  $("s-uptime").textContent = duration(st.uptime_s);
  const alive = st.workers.filter((w) => w.alive).length;
  $("s-workers").textContent = alive + "/" + st.workers.length;
  $("s-connections").textContent = st.connections;
  $("s-bans").textContent = st.bans;
  const r = st.last_reload;
  $("s-reload").textContent = r ? (r.ok ? "ok" : "FAILED") : "–";
  $("s-reload").className = r && !r.ok ? "bad" : "";
}

function renderListeners(doc) {
  fill("listeners", doc.data, (tr, l) => {
    cell(tr, l.listener);
    cell(tr, l.bind);
    cell(tr, l.upstream_address);
    cell(tr, l.verify);
    cell(tr, l.active, "num");
    cell(tr, l.accepted, "num");
    cell(tr, l.connections_total, "num");
    cell(tr, l.handshakes_ok, "num");
    cell(tr, l.handshakes_failed, "num");
    const refused = Object.values(l.refusals || {}).reduce((a, b) => a + b, 0);
    cell(tr, refused, "num");
    cell(tr, bytes(l.bytes_in), "num");
    cell(tr, bytes(l.bytes_out), "num");
  });
  const rows = [];
  for (const l of doc.data) {
    for (const [reason, n] of Object.entries(l.refusals || {})) {
      rows.push([l.listener, "refusal", reason, n]);
    }
    for (const [reason, n] of Object.entries(l.handshake_failures || {})) {
      rows.push([l.listener, "handshake failure", reason, n]);
    }
  }
  rows.sort((a, b) => b[3] - a[3]);
  fill("refusals", rows, (tr, r) => {
    cell(tr, r[0]); cell(tr, r[1]); cell(tr, r[2]); cell(tr, r[3], "num");
  }, "no refusals");
}

function stapleFor(rev, cert) {
  if (!rev || !rev.configured || !Array.isArray(rev.ocsp_staples)) return null;
  return rev.ocsp_staples.find((s) => s.fingerprint_sha256 &&
    s.fingerprint_sha256.replace(/:/g, "").toLowerCase() ===
    cert.fingerprint_sha256.replace(/:/g, "").toLowerCase()) || null;
}

function renderCertificates(doc) {
  const rows = [];
  for (const l of doc.listeners) {
    for (const ch of l.chains) {
      ch.certificates.forEach((c, i) => rows.push({ l, ch, c, i }));
    }
  }
  fill("certificates", rows, (tr, r) => {
    tr.className = "cert-" + r.c.status;
    cell(tr, r.l.listener);
    cell(tr, r.ch.role ? "(" + r.ch.role + ")" : (r.ch.server_name || "(default)"));
    cell(tr, r.i === 0 ? "leaf" : "chain " + r.i);
    cell(tr, r.c.subject);
    cell(tr, r.c.not_after);
    cell(tr, Math.floor(r.c.days_left), "num");
    const st = cell(tr, r.c.status);
    st.className = "badge " + r.c.status;
    const staple = stapleFor(doc.revocation, r.c);
    cell(tr, staple ? (staple.stapled ? "good, " + duration(staple.staple_age_seconds) + " old"
      : "none" + (staple.last_error ? " (" + staple.last_error + ")" : "")) : "–");
  });
  const rev = doc.revocation || {};
  let text = rev.configured ? "" : (rev.message || "");
  if (rev.configured && Array.isArray(rev.crls)) {
    text = "CRL sources: " + (rev.crls.length ? rev.crls.map((c) =>
      c.source + (c.cached ? " (held, " + duration(c.age_seconds) + " old)" :
        " (none held" + (c.last_error ? ": " + c.last_error : "") + ")")).join("; ") : "none");
  }
  if (rev.error) text = "revocation status: " + rev.error;
  $("revocation").textContent = text;
}

function renderConnections(doc) {
  const meta = doc.meta;
  $("conn-count").textContent = "(" + meta.count + ")";
  $("page").textContent = "page " + meta.page + " of " + Math.max(1, Math.ceil(meta.count / meta.limit));
  $("prev").disabled = meta.page <= 1;
  $("next").disabled = !meta.hasnext;
  const now = Date.now() / 1000;
  fill("connections", doc.data, (tr, c) => {
    tr.dataset.connId = c.id;
    cell(tr, c.id, "mono");
    cell(tr, c.listener);
    cell(tr, c.peer, "mono");
    cell(tr, c.clientid);
    cell(tr, c.username);
    cell(tr, c.cert_cn || c.psk_identity);
    cell(tr, c.tls_version);
    cell(tr, c.cipher);
    cell(tr, bytes(c.bytes_in), "num");
    cell(tr, bytes(c.bytes_out), "num");
    cell(tr, duration(now - c.connected_at), "num");
    const td = document.createElement("td");
    const b = document.createElement("button");
    b.type = "button";
    b.className = "kick danger";
    b.textContent = "Kick";
    b.addEventListener("click", () => kick(c));
    td.appendChild(b);
    tr.appendChild(td);
  }, "no connections");
}

function renderBans(doc) {
  fill("bans", doc.data, (tr, b) => {
    cell(tr, b.kind);
    cell(tr, b.value, "mono");
    cell(tr, b.reason);
    cell(tr, b.until ? new Date(b.until * 1000).toISOString().replace(".000", "") : "never");
    const td = document.createElement("td");
    const btn = document.createElement("button");
    btn.type = "button";
    btn.className = "unban";
    btn.textContent = "Remove";
    btn.addEventListener("click", () => unban(b));
    td.appendChild(btn);
    tr.appendChild(td);
  }, "no bans");
}

// ---------------------------------------------------------------------------------- actions
async function refresh() {
  try {
    const q = new URLSearchParams({ page: state.page, limit: PAGE_SIZE });
    for (const [k, v] of Object.entries(state.filters)) if (v) q.set(k, v);
    const st = await api("GET", "/api/v1/status");  // first: a refused token stops here
    const [ls, certs, conns, bans] = await Promise.all([
      api("GET", "/api/v1/listeners"),
      api("GET", "/api/v1/certificates"), api("GET", "/api/v1/connections?" + q),
      api("GET", "/api/v1/bans"),
    ]);
    showMain();
    renderStatus(st);
    renderListeners(ls);
    renderCertificates(certs);
    renderConnections(conns);
    renderBans(bans);
    const errs = [].concat(st.errors || [], ls.errors || [], conns.errors || []);
    if (errs.length) say("some workers did not answer: " + errs.join("; "), true);
  } catch (e) {
    if (e instanceof Unauthorized) {
      stopTimer();
      showLogin(token() ? "That token was refused." : "");
      return;
    }
    if ($("main").hidden) showLogin("cannot reach tlsgate: " + e.message);
    else say("cannot reach tlsgate: " + e.message, true);
  }
}

async function kick(c) {
  if (!confirm("Disconnect " + (c.clientid || c.id) + " (" + c.peer + ")?")) return;
  try {
    await api("DELETE", "/api/v1/connections/" + encodeURIComponent(c.id));
    say("kicked " + (c.clientid || c.id));
  } catch (e) {
    say("kick failed: " + e.message, true);
  }
  setTimeout(refresh, 300);
}

async function unban(b) {
  try {
    await api("DELETE", "/api/v1/bans/" + encodeURIComponent(b.kind) + "/" +
      encodeURIComponent(b.value));
    say("ban on " + b.kind + " " + b.value + " removed");
  } catch (e) {
    say("removing the ban failed: " + e.message, true);
  }
  refresh();
}

async function addBan(ev) {
  ev.preventDefault();
  const body = { kind: $("ban-kind").value, value: $("ban-value").value };
  if ($("ban-duration").value.trim()) body.duration = $("ban-duration").value.trim();
  if ($("ban-reason").value.trim()) body.reason = $("ban-reason").value.trim();
  try {
    const res = await api("POST", "/api/v1/bans", body);
    say("banned " + body.kind + " " + body.value + "; " + res.closed.length +
      " live connection(s) closed");
    $("ban-value").value = "";
  } catch (e) {
    say("ban failed: " + e.message, true);
  }
  refresh();
}

async function reloadConfig() {
  try {
    const res = await api("POST", "/api/v1/reload");
    say(res.ok ? "reloaded: " + (res.changes.join("; ") || "nothing changed")
      : "reload FAILED, the old configuration keeps serving: " + res.problems.join("; "), !res.ok);
  } catch (e) {
    say("reload failed: " + e.message, true);
  }
  refresh();
}

function stopTimer() {
  if (state.timer) clearInterval(state.timer);
  state.timer = null;
}

function startTimer() {
  stopTimer();
  if ($("auto").checked) state.timer = setInterval(refresh, REFRESH_MS);
}

function applyFilter(ev) {
  if (ev) ev.preventDefault();
  state.filters = {
    clientid: $("f-clientid").value.trim(), username: $("f-username").value.trim(),
    cn: $("f-cn").value.trim(), psk_identity: $("f-psk").value.trim(),
    peer: $("f-peer").value.trim(),
  };
  state.page = 1;
  refresh();
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token-input").value);
    $("token-input").value = "";
    refresh().then(startTimer);
  });
  $("logout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    stopTimer();
    showLogin("");
  });
  $("refresh").addEventListener("click", refresh);
  $("reload").addEventListener("click", reloadConfig);
  $("auto").addEventListener("change", startTimer);
  $("conn-filter").addEventListener("submit", applyFilter);
  $("conn-clear").addEventListener("click", () => {
    for (const id of ["f-clientid", "f-username", "f-cn", "f-psk", "f-peer"]) $(id).value = "";
    applyFilter();
  });
  $("prev").addEventListener("click", () => { state.page = Math.max(1, state.page - 1); refresh(); });
  $("next").addEventListener("click", () => { state.page += 1; refresh(); });
  $("ban-form").addEventListener("submit", addBan);
  refresh().then(startTimer);
});
