// hapair monitor page: polls /api/status and draws the pair; admins act through /api/.
// Plain JavaScript, no build step. Every value from the agent goes in as text, never HTML.
"use strict";

const POLL_MS = 2000;
const csrf = document.querySelector('meta[name="csrf-token"]').content;
const isAdmin = document.querySelector('meta[name="role"]').content === "admin";
let clockSkew = 0; // the agent's clock minus ours, from the Date header
let timer = null;

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function tag(text, cls) {
  return el("span", { class: `tag ${cls || text}` }, text);
}

function dash(value) {
  return value === undefined || value === null ? "-" : value;
}

function ago(seconds) {
  if (seconds === undefined || seconds === null) return "never";
  if (seconds < 10) return `${seconds.toFixed(2)}s ago`;
  if (seconds < 120) return `${Math.round(seconds)}s ago`;
  if (seconds < 7200) return `${Math.round(seconds / 60)}m ago`;
  if (seconds < 172800) return `${Math.round(seconds / 3600)}h ago`;
  return `${Math.round(seconds / 86400)}d ago`;
}

function nowSeconds() {
  return (Date.now() + clockSkew) / 1000;
}

function since(time) {
  if (!time) return "-";
  const when = new Date(time * 1000);
  return `${when.toLocaleString()} (${ago(nowSeconds() - time)})`;
}

function endpoint(address, port) {
  const host = String(address).includes(":") ? `[${address}]` : address;
  return port === undefined || port === null ? host : `${host}:${port}`;
}

function show(id, text) {
  const box = document.getElementById(id);
  box.textContent = text || "";
  box.hidden = !text;
}

// Talking to the agent.

async function call(method, path, body) {
  const headers = { "X-CSRF-Token": csrf };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401) { location.assign("/login"); return null; }
  let reply = {};
  try { reply = await response.json(); } catch (e) { reply = { error: response.statusText }; }
  return { ok: response.ok && reply.ok !== false, reply, status: response.status };
}

function confirmAction(text) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-text").textContent = text;
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "ok"), { once: true });
    dialog.returnValue = "";
    dialog.showModal();
  });
}

async function act(method, path, body, what, confirmText) {
  if (confirmText && !(await confirmAction(confirmText))) return;
  show("notice", `${what}…`);
  try {
    const result = await call(method, path, body);
    if (result === null) return;
    const msg = result.ok ? `${what}: ${result.reply.result || "done"}` : `${what} refused: ${result.reply.error}`;
    show("notice", msg);
    document.getElementById("notice").className = `banner ${result.ok ? "ok" : "bad"}`;
  } catch (e) {
    show("notice", `${what} failed: ${e}`);
  }
  refresh();
}

// Drawing.

function directorCard(d) {
  const holder = d.holds;
  return el("div", { class: `panel director${holder ? " holder" : ""}`, "data-node": d.name || "" },
    el("h2", {}, d.label, " ", el("span", { class: "muted" }, d.name || "unknown")),
    el("div", { class: `state ${d.state || "off"}` }, d.state || "unknown"),
    el("dl", {},
      el("dt", {}, "priority"), el("dd", {}, dash(d.priority)),
      el("dt", {}, "since"), el("dd", {}, d.since ? since(d.since) : "-"),
      el("dt", {}, "VIPs"), el("dd", { class: holder ? "ok" : "muted" }, holder ? "holds the VIPs" : "not holding"),
      d.extra || []),
    d.button || []);
}

function drawPair(s) {
  const peer = s.peer || {};
  const held = (s.vips || []).some((v) => v.held);
  const release = isAdmin && s.state === "MASTER"
    ? el("p", {}, el("button", {
      id: "release", class: "danger",
      onclick: () => act("POST", "/api/release", undefined, "release the VIPs",
        `Release the VIPs from ${s.node} to ${peer.node || "the peer"} now? Clients move to the peer.`),
    }, "Release VIPs to peer"))
    : null;
  const peerCard = {
    label: "Peer", name: peer.node, state: peer.alive ? peer.state : (peer.node ? "DEAD" : null),
    priority: peer.priority, since: peer.since,
    holds: peer.alive && peer.state === "MASTER",
    extra: [el("dt", {}, "last heard"), el("dd", { class: peer.alive ? "" : "bad" },
      peer.last_heard === null || peer.last_heard === undefined ? "never" : ago(peer.last_heard))],
  };
  const own = {
    label: "This node", name: s.node, state: s.state, priority: s.priority, since: s.since,
    holds: held, button: release,
    extra: s.health && !s.health.ok
      ? [el("dt", {}, "failing"), el("dd", { class: "bad" }, Object.entries(s.health.failing).map(([k, v]) => `${k}: ${v}`).join("; "))]
      : [],
  };
  document.getElementById("pair").replaceChildren(directorCard(own), directorCard(peerCard));
}

function drawLinks(s) {
  const rows = ((s.peer || {}).links || []).map((link) => el("tr", { "data-link": `${link.type}:${link.name}` },
    el("td", {}, `${link.type} ${link.name}`),
    el("td", {}, tag(link.alive ? "up" : "down")),
    el("td", {}, ago(link.last_heard))));
  document.querySelector("#links tbody").replaceChildren(...rows);
}

function drawVips(s) {
  const peer = s.peer || {};
  const rows = (s.vips || []).map((v) => el("tr", {},
    el("td", {}, v.address), el("td", {}, v.interface),
    el("td", {}, v.held ? tag(s.node, "ok") : (peer.alive && peer.state === "MASTER" ? tag(peer.node, "info") : tag("nobody", "bad")))));
  document.querySelector("#vips tbody").replaceChildren(...rows);
  const sync = s.sync || {};
  document.getElementById("sync").textContent = sync.enabled ? sync.role : "off";
}

function history(entries) {
  return el("span", { class: "history" }, (entries || []).map((h) => el("i", {
    class: h.up ? "up" : "down",
    title: `${h.up ? "up" : "DOWN"} ${new Date(h.time * 1000).toLocaleString()}${h.reason ? ": " + h.reason : ""}`,
  })));
}

function serverRow(svc, rs) {
  const addr = endpoint(rs.address, rs.port);
  const base = `/api/servers/${encodeURIComponent(svc.name)}/${encodeURIComponent(addr)}`;
  const probe = rs.probe;
  const button = (action, label, extra) => el("button", {
    "data-action": action, class: extra,
    disabled: (action === "drain" && rs.admin === "drained") || (action === "enable" && rs.admin === "enabled") || (action === "disable" && rs.admin === "disabled"),
    onclick: () => action === "remove"
      ? act("DELETE", base, undefined, `remove ${addr} from ${svc.name}`, `Remove ${addr} from ${svc.name}?`)
      : act("POST", `${base}/${action}`, undefined, `${action} ${addr} in ${svc.name}`),
  }, label);
  return el("tr", { "data-server": `${svc.name}/${addr}` },
    el("td", {}, addr),
    el("td", { class: "health" }, tag(rs.healthy ? "up" : "down")),
    el("td", { class: "num weight" }, dash(rs.weight)),
    el("td", { class: "admin" }, tag(rs.admin || "enabled"), rs.in_ipvs === false ? el("span", { class: "muted" }, " not in IPVS") : null),
    el("td", { class: "num" }, dash(rs.active_conns)),
    el("td", { class: "num" }, dash(rs.inactive_conns)),
    el("td", {}, probe ? el("span", { class: probe.ok ? "ok" : "bad", title: probe.reason || "" }, probe.ok ? "ok" : (probe.reason || "failed")) : "-"),
    el("td", { class: "num" }, probe && probe.latency_ms !== undefined ? `${probe.latency_ms} ms` : "-"),
    el("td", {}, history(rs.history)),
    isAdmin ? el("td", { class: "actions" },
      button("drain", "Drain"), " ", button("enable", "Enable"), " ", button("disable", "Disable"), " ",
      button("remove", "Remove", "danger")) : null);
}

const serviceBoxes = new Map(); // name -> {box, head, tbody}: kept, so a half-typed form survives a poll

function serviceBox(svc) {
  let entry = serviceBoxes.get(svc.name);
  if (entry) return entry;
  const head = el("div", { class: "service-head" });
  const columns = ["Real server", "Health", "Weight", "Admin", "ActiveConn", "InActConn", "Last probe", "Latency", "History"];
  if (isAdmin) columns.push("Actions");
  const tbody = el("tbody");
  const table = el("table", {}, el("thead", {}, el("tr", {}, columns.map((c) => el("th", {}, c)))), tbody);
  const box = el("div", { class: "panel service", "data-service": svc.name }, head, el("div", { class: "scroll" }, table));
  if (isAdmin) {
    const server = el("input", { name: "server", placeholder: "address:port", required: true, "aria-label": "new real server" });
    const weight = el("input", { name: "weight", type: "number", min: "0", max: "65535", value: "1", "aria-label": "weight" });
    box.append(el("form", {
      class: "add-server",
      onsubmit: (event) => {
        event.preventDefault();
        act("POST", `/api/servers/${encodeURIComponent(svc.name)}`,
          { server: server.value.trim(), weight: Number(weight.value || 1) }, `add ${server.value.trim()} to ${svc.name}`);
        server.value = "";
      },
    }, server, weight, el("button", { type: "submit" }, "Add real server")));
  }
  entry = { box, head, tbody };
  serviceBoxes.set(svc.name, entry);
  return entry;
}

function drawServices(s) {
  const services = s.services || [];
  const boxes = services.map((svc) => {
    const { box, head, tbody } = serviceBox(svc);
    const where = svc.fwmark ? `FWM  ${svc.fwmark}` : `${String(svc.protocol).toUpperCase()}  ${endpoint(svc.address, svc.port)}`;
    const total = (svc.real_servers || []).length;
    head.replaceChildren(...[
      el("h3", {}, svc.name),
      el("code", {}, `${where} ${svc.scheduler || ""}`.trim()),
      el("span", { class: svc.quorum_ok === false ? "bad" : "muted" }, `${dash(svc.healthy)} of ${total} healthy${svc.quorum_ok === false ? ", QUORUM LOST" : ""}`),
      svc.sorry_server ? tag("sorry server in use", "warn") : null,
    ].filter(Boolean));
    tbody.replaceChildren(...(svc.real_servers || []).map((rs) => serverRow(svc, rs)));
    return box;
  });
  for (const name of serviceBoxes.keys()) {
    if (!services.some((svc) => svc.name === name)) serviceBoxes.delete(name);
  }
  document.getElementById("services").replaceChildren(...boxes);
}

function drawAlerts(s) {
  const alerts = s.alerts;
  const list = document.getElementById("alerts");
  if (!alerts) {
    document.getElementById("alerts-queued").textContent = "";
    list.replaceChildren(el("li", { class: "muted" }, "no alerts reported"));
    return;
  }
  document.getElementById("alerts-queued").textContent = `${alerts.queued || 0} queued for delivery`;
  const recent = (alerts.recent || []).slice(-10).reverse();
  list.replaceChildren(...(recent.length ? recent.map((a) => el("li", {},
    el("span", { class: "muted" }, a.time ? new Date(a.time * 1000).toLocaleString() : ""), " ",
    tag(a.severity || "info"), " ", el("strong", {}, a.event || ""), " ", a.summary || "")) : [el("li", { class: "muted" }, "none recently")]));
}

// The configuration editor: the running config file, checked and applied by the agent
// (GET/PUT /api/config, POST /api/config/check, history and rollback).

const short = (version) => (version ? String(version).slice(0, 12) : "-");
const editor = {
  base: null, // the version the text in the editor started from
  loaded: false, // the editor holds a loaded config (and maybe edits of it)
  dirty: false, // edited since it was loaded
  running: null, // the running version, as the last status said
  peerNode: null,
  pair: null, // a pair file (both directors' in one); null until GET /api/config said
  bannerKey: null,
};

function configResult(cls, headline, lines, extra) {
  const box = document.getElementById("config-result");
  box.className = `config-result banner ${cls}`;
  box.replaceChildren(...[
    el("p", {}, headline),
    lines && lines.length ? el("ul", {}, lines.map(resultLine)) : null,
    extra,
  ].filter(Boolean));
  box.hidden = false;
}

// A line of the result: a text, or an error with the line of the editor it is at
// ({text, line}); the line's button selects it in the editor.
function resultLine(item) {
  if (typeof item === "string") return el("li", {}, el("code", {}, item));
  if (!item.line) return el("li", {}, el("code", {}, item.text));
  return el("li", {},
    el("button", { type: "button", class: "at-line", "data-line": String(item.line), onclick: () => showLine(item.line) }, `line ${item.line}`),
    " ", el("code", {}, item.text));
}

// Each error of an invalid text with its line (the API's `lines`, where it gives one).
function errorItems(reply, fallback) {
  const errors = reply.errors || [reply.error || fallback];
  const lines = Array.isArray(reply.lines) ? reply.lines : [];
  return errors.map((text, i) => ({ text, line: Number.isInteger(lines[i]) ? lines[i] : null }));
}

function showLine(number) {
  const editor = document.getElementById("config-editor");
  const lines = editor.value.split("\n");
  const start = lines.slice(0, number - 1).reduce((n, line) => n + line.length + 1, 0);
  const end = start + (lines[number - 1] || "").length;
  editor.focus();
  editor.setSelectionRange(start, end);
  const height = parseFloat(getComputedStyle(editor).lineHeight) || 18;
  editor.scrollTop = Math.max(0, (number - 3) * height);
}

// What the peer runs: a pair file's version is the whole file's; a one-director file's
// heartbeats compare only the settings both directors must share.
function drawConfigPeer(node, inSync, peerVersion) {
  let text = "";
  if (editor.pair === false) {
    text = "(a one-director file: it applies to this director alone)";
    if (inSync === false) text += `; ${node}'s shared settings differ`;
  } else if (editor.pair === true) {
    if (inSync === true) text = `· ${node} runs the same`;
    else if (inSync === false) text = `· ${node} runs ${peerVersion ? short(peerVersion) : "another version"}: they differ`;
    else text = `· ${node}: not known (not heard)`;
  }
  document.getElementById("config-peer").textContent = text;
}

async function loadConfig(force) {
  const result = await call("GET", "/api/config");
  if (result === null) return;
  if (!result.ok) {
    configResult("bad", `Cannot load the running config: ${result.reply.error || result.status}`);
    return;
  }
  const reply = result.reply;
  editor.running = reply.version;
  document.getElementById("config-version").textContent = short(reply.version);
  document.getElementById("config-version").title = reply.version;
  editor.pair = Boolean(reply.pair);
  const peer = reply.peer || {};
  editor.peerNode = peer.node || editor.peerNode;
  drawConfigPeer(peer.node || "the peer", peer.in_sync, peer.version);
  if (editor.dirty && !force) return; // keep the edit
  document.getElementById("config-editor").value = reply.toml;
  editor.base = reply.version;
  editor.loaded = true;
  editor.dirty = false;
  document.getElementById("config-stale").hidden = true;
}

function historyEntry(entry) {
  const when = entry.time ? new Date(entry.time * 1000).toLocaleString() : "-";
  const running = entry.version === editor.running;
  const rollback = isAdmin && !running
    ? el("button", {
      type: "button", class: "config-rollback danger",
      onclick: () => rollbackTo(entry, when),
    }, "Roll back")
    : null;
  return el("li", { "data-version": entry.version },
    el("code", { title: entry.version }, short(entry.version)), " ",
    el("span", { class: "muted" }, when), " ",
    el("strong", {}, entry.user || "-"), " ",
    el("span", { class: "summary" }, entry.summary || ""),
    running ? tag("running", "ok") : null,
    rollback ? " " : null, rollback);
}

async function loadHistory() {
  const list = document.getElementById("config-history");
  const result = await call("GET", "/api/config/history");
  if (result === null) return;
  if (!result.ok) {
    list.replaceChildren(el("li", { class: "bad" }, `Cannot load the history: ${result.reply.error || result.status}`));
    return;
  }
  const versions = result.reply.versions || [];
  list.replaceChildren(...(versions.length ? versions.map(historyEntry) : [el("li", { class: "muted" }, "none kept yet: the first change keeps the file as found and the new version")]));
}

async function reloadAll(force) {
  await loadConfig(force);
  await loadHistory();
}

function editorText() {
  return document.getElementById("config-editor").value;
}

async function checkConfig() {
  configResult("", "Checking…");
  let result;
  try {
    result = await call("POST", "/api/config/check", { toml: editorText() });
  } catch (e) {
    configResult("bad", `Check failed: ${e}`);
    return null;
  }
  if (result === null) return null;
  if (result.ok) {
    const changes = result.reply.changes || [];
    configResult("ok", changes.length ? `Valid. It would change (nothing is written by a check):` : "Valid, and no change from the running config.", changes);
    return changes;
  }
  const errors = errorItems(result.reply, `error ${result.status}`);
  configResult("bad", `Invalid: ${errors.length} error${errors.length === 1 ? "" : "s"}. Nothing was written.`, errors);
  return null;
}

// The outcome of a PUT or a rollback, in the result box; after a success the editor
// and the history show the running config again.
async function changed(result, what) {
  if (result === null) return;
  const reply = result.reply;
  if (result.ok) {
    configResult("ok", `${what}: applied ${short(reply.version)} on ${(reply.applied || []).join(", ") || "-"}`, reply.changes || []);
    await reloadAll(true);
    refresh();
    return;
  }
  const error = reply.error || `error ${result.status}`;
  if (result.status === 409) {
    configResult("bad", `${what} refused: someone else changed the running config since this edit started, or another change is under way. Nothing was changed. (${error})`, [],
      el("button", { type: "button", id: "config-load-running", onclick: () => reloadAll(true).then(() => configResult("", "Loaded the running config: your edit was discarded.")) },
        "Load the running config (discards this edit)"));
  } else if (result.status === 502) {
    configResult("bad", `${what} refused by the peer director: ${error}. Nothing was changed on either director.`);
  } else if (result.status === 422) {
    configResult("bad", `${what} refused: the running agent cannot take it. Nothing was changed.`, errorItems(reply, error));
  } else {
    configResult("bad", `${what} refused: ${error}`);
  }
  loadHistory();
}

async function applyConfig() {
  const changes = await checkConfig();
  if (changes === null) return;
  if (!changes.length) return;
  const target = editor.pair ? ` on this director and ${editor.peerNode || "the peer"}` : " on this director";
  const ok = await confirmAction(`Apply this config${target}? The agent reloads it now.\n\n${changes.join("\n")}`);
  if (!ok) { configResult("", "Not applied."); return; }
  configResult("", "Applying…");
  try {
    await changed(await call("PUT", "/api/config", { toml: editorText(), version: editor.base }), "Apply");
  } catch (e) {
    configResult("bad", `Apply failed: ${e}`);
  }
}

async function rollbackTo(entry, when) {
  const ok = await confirmAction(`Roll the running config back to ${short(entry.version)} (${when}, ${entry.user || "-"}: ${entry.summary || ""})? The agent reloads it now.`);
  if (!ok) return;
  configResult("", `Rolling back to ${short(entry.version)}…`);
  try {
    await changed(await call("POST", "/api/config/rollback", { version: entry.version }), `Roll back to ${short(entry.version)}`);
  } catch (e) {
    configResult("bad", `Roll back failed: ${e}`);
  }
}

// A pair whose directors run different files: the peer is given this director's own.
async function pushOwnConfig(peer) {
  const shown = await call("GET", "/api/config");
  if (shown === null) return;
  if (!shown.ok) { show("notice", `Cannot load the running config: ${shown.reply.error}`); return; }
  const ok = await confirmAction(`Make ${peer} run this director's config ${short(shown.reply.version)}? ${peer} reloads it now.`);
  if (!ok) return;
  const result = await call("PUT", "/api/config", { toml: shown.reply.toml, version: shown.reply.version });
  if (result === null) return;
  const notice = document.getElementById("notice");
  if (result.ok) show("notice", `${peer} now runs ${short(result.reply.version)} (applied on ${(result.reply.applied || []).join(", ")})`);
  else show("notice", `${peer} was not changed: ${result.reply.error || (result.reply.errors || []).join("; ")}${result.status === 502 ? " (nothing was changed)" : ""}`);
  notice.className = `banner ${result.ok ? "ok" : "bad"}`;
  refresh();
  loadHistory();
}

function drawConfig(s) {
  const config = s.config || {};
  const peer = (s.peer || {}).node || "the peer";
  editor.running = config.version || null;
  if ((s.peer || {}).node) editor.peerNode = s.peer.node;
  const version = document.getElementById("config-version");
  version.textContent = short(config.version);
  version.title = config.version || "";
  drawConfigPeer(peer, config.in_sync, config.peer_version);
  const stale = document.getElementById("config-stale");
  const isStale = editor.loaded && config.version && config.version !== editor.base;
  stale.hidden = !isStale;
  if (isStale) stale.textContent = `The running config is now ${short(config.version)}; this editor started from ${short(editor.base)}. Load the running config before you apply.`;

  const banner = document.getElementById("config-banner");
  const differ = config.in_sync === false && editor.pair !== null;
  const key = differ ? `${editor.pair} ${config.version} ${config.peer_version} ${peer}` : null;
  if (key === editor.bannerKey) return; // unchanged: keep the button under the pointer
  editor.bannerKey = key;
  if (key === null) { banner.hidden = true; banner.replaceChildren(); return; }
  if (editor.pair) {
    banner.replaceChildren(
      `This director runs ${short(config.version)}, ${peer} runs ${config.peer_version ? short(config.peer_version) : "another version"}: the directors' configurations differ. `,
      ...(isAdmin ? [el("button", { type: "button", id: "config-push", onclick: () => pushOwnConfig(peer) }, `Make ${peer} run this director's config`)] : []));
  } else {
    banner.replaceChildren(`The settings this director and ${peer} must share differ (each has its own one-director file): change them on both.`);
  }
  banner.hidden = false;
}

function setUpEditor() {
  const area = document.getElementById("config-editor");
  area.readOnly = !isAdmin;
  document.getElementById("config-readonly").hidden = isAdmin;
  if (!isAdmin) for (const node of document.querySelectorAll(".admin-only")) node.remove();
  area.addEventListener("input", () => { editor.dirty = true; });
  document.getElementById("config").addEventListener("toggle", (event) => {
    if (event.target.open) reloadAll(false).catch((e) => configResult("bad", `Cannot load the running config: ${e}`));
  });
  document.getElementById("config-check").addEventListener("click", checkConfig);
  if (isAdmin) document.getElementById("config-apply").addEventListener("click", applyConfig);
  document.getElementById("config-reload").addEventListener("click", async () => {
    if (editor.dirty && !(await confirmAction("Discard your edit and load the running config?"))) return;
    await reloadAll(true);
    document.getElementById("config-result").hidden = true;
  });
}

function draw(s) {
  drawPair(s);
  drawLinks(s);
  drawVips(s);
  drawServices(s);
  drawAlerts(s);
  drawConfig(s);
}

async function refresh() {
  clearTimeout(timer);
  try {
    const response = await fetch("/api/status", { credentials: "same-origin", cache: "no-store" });
    if (response.status === 401) { location.assign("/login"); return; }
    if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
    const date = Date.parse(response.headers.get("Date"));
    if (!Number.isNaN(date)) clockSkew = date - Date.now();
    draw(await response.json());
    show("problem", "");
    document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    show("problem", `The agent does not answer: ${e.message || e}`);
  }
  timer = setTimeout(refresh, POLL_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  setUpEditor();
  refresh();
  loadConfig(false).catch((e) => configResult("bad", `Cannot load the running config: ${e}`));
});
