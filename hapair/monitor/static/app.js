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
  return { ok: response.ok && reply.ok !== false, reply };
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

function draw(s) {
  drawPair(s);
  drawLinks(s);
  drawVips(s);
  drawServices(s);
  drawAlerts(s);
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

document.addEventListener("DOMContentLoaded", refresh);
