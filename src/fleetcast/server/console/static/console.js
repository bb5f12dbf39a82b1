// fleetcast console: reads the public REST API with the session cookie, renders with textContent
// (never innerHTML: every string an agent sends stays text), follows /api/events for live updates.
"use strict";

const csrf = (document.querySelector('meta[name="csrf-token"]') || {}).content || "";
const $ = (sel, root) => (root || document).querySelector(sel);

class ApiError extends Error {
  constructor(status, body) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.hint = body && body.hint;
  }
}

async function api(method, path, body) {
  const init = { method, credentials: "same-origin", headers: { "X-CSRF-Token": csrf } };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  if (r.status === 401) {
    location.assign("/signin?expired=1");
    throw new ApiError(401, { message: "signed out" });
  }
  const data = await r.json().catch(() => null);
  if (!r.ok) throw new ApiError(r.status, data);
  return data;
}

// -- formatting: sizes as the CLI prints them (human_bytes), times in the browser's zone ---------
function bytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (Math.abs(n) >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return i === 0 ? `${n.toFixed(0)} B` : `${n.toFixed(1)} ${units[i]}`;
}
function disksize(n) { return !n ? "" : n >= 1e9 ? `${(n / 1e9).toFixed(1)} GB (${bytes(n)})` : bytes(n); }
const cap = (t) => (t ? t[0].toUpperCase() + t.slice(1) : "");
function sentence(err) { return cap(err.message) + (err.hint ? `. ${cap(err.hint)}.` : "."); }
function rate(bps) { return bps ? `${(bps / 1e6).toFixed(1)} MB/s` : ""; }
function duration(s) {
  if (s === null || s === undefined) return "";
  s = Math.max(0, Math.round(s));
  const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = s % 60;
  const pad = (x) => String(x).padStart(2, "0");
  return h ? `${h}:${pad(m)}:${pad(sec)}` : `${m}:${pad(sec)}`;
}
function when(iso) { return iso ? new Date(iso).toLocaleString() : ""; }

function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) if (c !== null && c !== undefined) e.append(c instanceof Node ? c : String(c));
  return e;
}

function problem(err) {
  const box = $("#problem");
  if (!err) { box.hidden = true; box.textContent = ""; return; }
  box.textContent = sentence(err);
  box.hidden = false;
}

function throttled(fn, ms) { // fn once, ms after the first call of a burst
  let timer = null;
  return () => { if (!timer) timer = setTimeout(() => { timer = null; fn(); }, ms); };
}
function coalesced(fn, ms) { // fn at most once every ms: at once after a quiet spell, else at the window's end
  let last = -Infinity, timer = null;
  const run = () => { timer = null; last = Date.now(); fn(); };
  return () => {
    if (timer) return;
    const wait = last + ms - Date.now();
    if (wait <= 0) run(); else timer = setTimeout(run, wait);
  };
}

function live(path, onEvent) {
  // EventSource sends the session cookie; no token in the URL. It reconnects by itself after a
  // dropped connection (sending Last-Event-ID); after an error answer (401 when the session ended,
  // 5xx) it gives up: then /api/me decides -- sign-in page, or a new stream from the last event seen.
  let last = null;
  // every type the server sends (events.EVENT_TYPES, in the page): a named SSE event reaches only
  // listeners of its name
  const types = ((document.querySelector('meta[name="event-types"]') || {}).content || "").split(" ").filter(Boolean);
  const seen = (m) => { if (m.lastEventId) last = m.lastEventId; onEvent(JSON.parse(m.data)); };
  function open() {
    let url = path;
    if (last !== null) {
      const u = new URL(path, location.href);
      u.searchParams.set("since", last);
      url = u.pathname + u.search;
    }
    const es = new EventSource(url);
    es.onmessage = seen;
    for (const t of types) es.addEventListener(t, seen);
    es.onerror = () => {
      if (es.readyState !== EventSource.CLOSED) return; // the browser retries by itself
      api("GET", "/api/me").then(() => setTimeout(open, 2000), () => {}); // a 401 goes to sign-in
    };
    return es;
  }
  return open();
}

function progressCell(done, total) {
  const pct = total ? Math.floor((100 * done) / total) : 0;
  return el("span", { class: "bar" }, el("progress", { max: 100, value: pct, "aria-label": `${pct} %` }), ` ${pct} %`);
}

// Hooks filled by the page scripts loaded after this one (capture.js, multicast.js): each CLIENT_ACTIONS
// entry makes a button (or null) for one client of the dashboard's inventory panel, (client, canChange);
// each DEPLOYMENT_PANELS entry is called with the deployment page's context (deployment() below).
const CLIENT_ACTIONS = [];
const DEPLOYMENT_PANELS = [];

function windowsInstalls(list) { // what the agent found on its disks (issue 13's SID audit)
  if (!list.length) return null;
  return el("div", {}, el("h3", {}, "Windows on its disks"), el("table", { id: "windows-installs" },
    el("thead", {}, el("tr", {}, ...["Disk", "Partition", "Computer name", "Version", "Machine SID", "Domain"].map((h) => el("th", { scope: "col" }, h)))),
    el("tbody", {}, ...list.map((w) => el("tr", {}, el("td", { class: "mono" }, w.disk), el("td", {}, w.partition), el("td", {}, w.computer_name || ""),
      el("td", {}, w.version || ""), el("td", { class: "mono" }, w.error ? `unreadable: ${w.error}` : w.machine_sid || ""), el("td", {}, w.domain || ""))))));
}

// -- dashboard ------------------------------------------------------------------------------------
// A room of clients sends many events a second. They change the rows from their payload; /api/clients
// is read again only for what a payload cannot tell (a new or re-enrolled client's inventory, a MAC not
// in the table), at most once every REREAD_MS, and the table is redrawn at most once every DRAW_MS
// however many events arrive (tests/e2e/test_console_live.py counts the requests).
const REREAD_MS = 5000, DRAW_MS = 250;
const RUNNING_EVENTS = ["client-assigned", "client-started", "client-resumed", "client-restarted", "client-progress"];
const FINISHED_EVENTS = { "client-done": "done", "client-failed": "failed", "client-cancelled": null };

async function dashboard() {
  const progress = {}; // mac -> last client-progress event
  const results = {}; // mac -> done | failed (newest deployment)
  const assigned = {}; // mac -> "NAME IP" from the newest deployment that had the client
  const kinds = {}; // deployment id -> deploy | capture | personalize
  const selected = new Set();
  let clients = [];
  let index = new Map(); // mac -> client
  const canChange = document.body.dataset.role !== "viewer";

  function status(c) {
    if (!c.online) return "offline";
    if (c.state === "running") return kinds[c.deployment_id] === "capture" ? "capturing" : "deploying";
    if (c.state === "queued") return "queued";
    return results[c.mac] || "idle";
  }
  function model(c) { return (c.dmi && c.dmi.model) || ""; }
  function shown(c) {
    const q = $("#filter").value.trim().toLowerCase();
    if (!q) return true;
    return [c.hostname, c.mac, ...(c.macs || []), model(c), status(c), c.address].some((v) => (v || "").toLowerCase().includes(q));
  }
  function draw() {
    const online = clients.filter((c) => c.online).length;
    $("#connected").textContent = `${online} client${online === 1 ? "" : "s"} connected`;
    const body = $("#clients tbody");
    body.replaceChildren();
    for (const c of clients) {
      if (!shown(c)) continue;
      const st = status(c);
      const p = progress[c.mac];
      const prog = (st === "deploying" || st === "capturing") && p ? [progressCell(p.bytes_done, p.bytes_total), " ", rate(p.rate_bps)] : [c.phase || ""];
      const box = el("input", { type: "checkbox", "aria-label": `select ${c.hostname || c.mac}`, checked: selected.has(c.mac),
        onchange: (e) => { e.target.checked ? selected.add(c.mac) : selected.delete(c.mac); } });
      const name = el("button", { type: "button", class: "link", onclick: () => inventory(c) }, c.hostname || c.mac);
      body.append(el("tr", { "data-mac": c.mac, "data-state": st }, el("td", {}, box), el("td", {}, name), el("td", { class: "mono" }, c.mac),
        el("td", {}, c.address), el("td", {}, assigned[c.mac] || ""), el("td", {}, model(c)), el("td", {}, el("span", { class: `state ${st}` }, st)),
        el("td", {}, ...prog), el("td", {}, when(c.last_seen))));
    }
  }
  function inventory(c) {
    const box = $("#inventory");
    const cpu = c.cpu ? `${c.cpu.model || ""} (${c.cpu.cores || "?"} core${c.cpu.cores === 1 ? "" : "s"})` : "";
    const disks = el("table", {}, el("thead", {}, el("tr", {}, ...["Disk", "Model", "Serial", "Size"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, ...(c.disks || []).map((d) => el("tr", {}, el("td", { class: "mono" }, d.path || d.name || ""), el("td", {}, d.model || ""),
        el("td", { class: "mono" }, d.serial || ""), el("td", {}, disksize(d.size))))));
    const nics = (c.macs || [c.mac]).join(", ");
    const dmi = c.dmi || {};
    box.replaceChildren(el("h2", { tabindex: -1 }, `Inventory of ${c.hostname || c.mac}`),
      el("dl", {}, el("dt", {}, "Machine"), el("dd", {}, `${dmi.vendor || ""} ${dmi.model || ""}`.trim()),
        el("dt", {}, "Serial"), el("dd", {}, dmi.serial || ""), el("dt", {}, "CPU"), el("dd", {}, cpu),
        el("dt", {}, "RAM"), el("dd", {}, bytes(c.ram_bytes)), el("dt", {}, "NICs"), el("dd", { class: "mono" }, nics),
        el("dt", {}, "Agent"), el("dd", {}, c.agent_version || "")), disks, windowsInstalls(c.windows || []),
      // per-client actions (network capture, capture.js) are added here by CLIENT_ACTIONS
      el("div", { id: "client-actions", class: "wizard-nav", "data-client": c.id }, ...CLIENT_ACTIONS.map((make) => make(c, canChange)).filter(Boolean)));
    box.hidden = false;
    box.querySelector("h2").focus();
  }
  async function load() {
    try {
      clients = (await api("GET", "/api/clients")).clients;
      index = new Map(clients.map((c) => [c.mac, c]));
      problem(null);
    } catch (err) { problem(err); }
    draw();
  }
  async function newest() {
    const deps = (await api("GET", "/api/deployments")).deployments;
    for (const d of deps) kinds[d.deployment] = d.kind || "deploy";
    const dep = deps.find((d) => (d.kind || "deploy") === "deploy");
    if (!dep) return;
    const d = await api("GET", `/api/deployments/${dep.deployment}`);
    for (const t of d.clients) {
      if (t.state === "done" || t.state === "failed") results[t.mac] = t.state;
      assigned[t.mac] = [t.name, t.ip].filter(Boolean).join(" ");
      if (t.state === "running") progress[t.mac] = { bytes_done: t.bytes, bytes_total: t.bytes_total, rate_bps: t.rate_bps };
    }
  }
  // one event -> the row it concerns; false when only /api/clients can tell (then it is read again)
  function apply(ev) {
    const c = index.get(ev.mac);
    if (!c) return !ev.mac;
    if (ev.type === "client-enrolled") return false; // its inventory may have changed
    if (ev.type === "client-seen") { c.online = true; if (ev.address) c.address = ev.address; }
    else if (ev.type === "client-stale") c.online = false;
    else if (ev.type === "client-queued") { c.state = "queued"; c.deployment_id = ev.deployment_id; delete results[c.mac]; }
    else if (RUNNING_EVENTS.includes(ev.type)) {
      c.state = "running"; c.deployment_id = ev.deployment_id; delete results[c.mac];
      if (ev.phase) c.phase = ev.phase;
      if (ev.type === "client-progress") progress[c.mac] = ev;
    } else if (ev.type in FINISHED_EVENTS) {
      c.state = "idle"; c.phase = null; delete progress[c.mac];
      if (FINISHED_EVENTS[ev.type]) results[c.mac] = FINISHED_EVENTS[ev.type]; else delete results[c.mac];
    } else return true; // nothing the table shows
    if (ev.type !== "client-stale") { c.online = true; c.last_seen = ev.ts; }
    return true;
  }
  await newest();
  $("#filter").addEventListener("input", draw);
  $("#select-all").addEventListener("click", () => { clients.filter(shown).forEach((c) => selected.add(c.mac)); draw(); });
  $("#select-none").addEventListener("click", () => { selected.clear(); draw(); });
  const go = $("#deploy-selected");
  if (go && canChange) go.addEventListener("click", () => {
    const macs = [...selected];
    location.assign("/deploy" + (macs.length ? `?clients=${encodeURIComponent(macs.join(","))}` : ""));
  });
  const reread = coalesced(load, REREAD_MS);
  const redraw = coalesced(draw, DRAW_MS);
  const deployments = coalesced(() => newest().then(redraw, problem), REREAD_MS);
  live("/api/events", (ev) => {
    if (ev.type === "deployment-created") deployments();
    if (apply(ev)) redraw(); else reread();
  });
  await load();
  setInterval(load, 15000); // last seen, and any change no event told about
}

// -- deploy wizard -----------------------------------------------------------------------------
const FIELD_OF = [ // a problem's message -> the field it concerns (first match wins)
  [/^transport|min.clients|max.wait|multicast.from|multicast/i, "transport"],
  [/IP list|has no line in the IP list|the IP list gives/i, "ip_list"], [/^both an IP range/i, "ip"],
  [/driver folder/i, "drivers"], [/unattend/i, "unattend"], [/only appl(y|ies) to Windows/i, "drivers"],
  [/^image/i, "image"], [/^(client|no clients)/i, "clients"], [/disk rule|^disk/i, "disk"], [/^batch/i, "batch"],
  [/^name pattern|name/i, "name"], [/DNS/, "dns"], [/^gateway|gateway/i, "gateway"], [/^IP|address/i, "ip"],
  [/post action|then/i, "then"],
];
const STEP_OF = { image: 1, clients: 2, disk: 3, batch: 4, transport: 4, name: 5, ip: 6, ip_list: 6, gateway: 6, dns: 6,
  drivers: 7, unattend: 7, then: 8 };
const THEN_WORDS = { reboot: "reboot", shutdown: "shut down", none: "do nothing" };

function fileInto(input, textarea, after) { // a chosen file's text into a textarea (nothing is uploaded)
  input.addEventListener("change", async () => {
    const f = input.files && input.files[0];
    if (!f) return;
    textarea.value = await f.text();
    after();
  });
}

const MBIT = 125000; // bytes/s in a Mbit/s: the wizard asks Mbit/s, the API takes drop_below in bytes/s
function transport(f) { // the wizard's transport fields -> the body keys of POST /api/deployments
  const t = f.transport.value, num = (v) => (v.trim() === "" ? null : Number(v));
  if (t === "unicast") return { transport: t };
  const drop = num(f.drop_below.value);
  return { transport: t, min_clients: num(f.min_clients.value), max_wait: num(f.max_wait.value),
    multicast_from: t === "auto" ? num(f.multicast_from.value) : null,
    drop_below: drop === null ? null : drop * MBIT, repair: f.repair.value || null };
}
function transportProblem(f) { // what the API would refuse with a less plain message
  if (f.transport.value === "unicast") return "";
  const min = f.min_clients.value.trim(), wait = f.max_wait.value.trim(), from = f.multicast_from.value.trim();
  if (min !== "" && !(Number.isInteger(Number(min)) && Number(min) >= 1)) return "The stream needs at least 1 client to start: give 1 or more, or leave it empty for the batch's size.";
  if (wait !== "" && !(Number(wait) >= 0 && Number(wait) <= 86400)) return "The longest wait is 0 to 86400 seconds (a day).";
  if (f.transport.value === "auto" && from !== "" && !(Number.isInteger(Number(from)) && Number(from) >= 1)) return "Auto needs the number of clients in a batch from which multicast is used: 1 or more.";
  const drop = f.drop_below.value.trim();
  if (drop !== "" && !(Number(drop) >= 0)) return "The drop-out rate is 0 or more Mbit/s (0: never drop a client).";
  return "";
}
const REPAIR_WORDS = { sooner: "the next cycle of the stream or HTTP, whichever is sooner", cycle: "the next cycle of the stream", http: "HTTP at once" };
function transportLine(p, batch) { // the review's words for the plan's transport
  if (!p.transport) return "";
  const why = (p.transport_reason || "").startsWith("auto") ? ` (${p.transport_reason})` : "";
  const mc = p.multicast;
  if (p.transport !== "multicast" || !mc) return `Transport: ${p.transport}${why}.`;
  const n = mc.min_clients || Math.min(batch, p.clients.length);
  const drop = mc.drop_below ? ` A client below ${+(mc.drop_below / MBIT).toFixed(1)} Mbit/s is dropped and finishes by HTTP.` : "";
  const late = mc.repair ? ` Late joiners and missing packs: ${REPAIR_WORDS[mc.repair]}.` : "";
  return `Transport: multicast${why}, one stream per batch; it starts when ${n} client${n === 1 ? " has" : "s have"} joined, ` +
    `or after ${duration(mc.max_wait)} (min:s) at most.${drop}${late}`;
}

function windowsLine(w) { // the same words as `fleetcast deploy --plan`
  if (!w) return "";
  const unattend = w.unattend === "custom" ? `unattend.xml given (${bytes(w.unattend_bytes)})` : w.unattend === "none" ? "no unattend.xml" : "unattend.xml by fleetcast";
  return `Windows: ${w.new_sid ? "new machine SID" : "machine SID kept"}, ${w.reset_ids ? "machine IDs reset" : "machine IDs kept"}, ` +
    `${w.drivers ? `drivers from ${w.drivers} (${w.drivers_infs} INF)` : "no drivers added"}, ${unattend}`;
}

async function wizard() {
  const form = $("#wizard");
  const steps = [...form.querySelectorAll(".step")];
  let step = 1;
  const preset = new URLSearchParams(location.search).get("clients");

  const images = (await api("GET", "/api/images")).images;
  const sel = $("#image");
  for (const im of images) sel.append(el("option", { value: im.name }, `${im.name} (${disksize(im.disk_size)})`));
  const showImage = () => {
    const im = images.find((i) => i.name === sel.value);
    $("#image-info").textContent = im ? `OS: ${im.os_hint || "unknown"} · created ${when(im.created)} · stored ${bytes(im.stored_bytes)}` : "No images in the store.";
  };
  sel.addEventListener("change", showImage); showImage();

  const clients = (await api("GET", "/api/clients")).clients;
  const choices = $("#client-choices");
  for (const c of clients) {
    const id = `c-${c.mac.replaceAll(":", "")}`;
    choices.append(el("label", { for: id }, el("input", { type: "checkbox", id, value: c.mac, checked: !preset || preset.split(",").includes(c.mac) }),
      ` ${c.hostname || ""} ${c.mac}${c.online ? "" : " (offline)"}`));
  }
  if (preset) form.elements.which.value = "some";

  const drivers = $("#drivers");
  try {
    for (const d of (await api("GET", "/api/drivers")).drivers) {
      drivers.append(el("option", { value: d.name }, `${d.name} (${d.infs} INF, ${bytes(d.bytes)})`));
    }
  } catch (err) { problem(err); }

  function body() {
    const f = form.elements;
    const macs = [...choices.querySelectorAll("input:checked")].map((i) => i.value);
    const mode = f.ipmode.value, um = f.unattend_mode.value;
    return {
      image: f.image.value, clients: f.which.value === "all" ? "all" : macs, disk: f.disk.value.trim(),
      batch: Number(f.batch.value), name: f.name.value.trim() || null,
      ip: mode === "range" ? f.ip.value.trim() || null : null,
      ip_list: mode === "list" ? f.ip_list.value : null,
      gateway: mode !== "dhcp" ? f.gateway.value.trim() || null : null, dns: mode !== "dhcp" ? f.dns.value.trim() : "",
      grow: f.grow.checked, then: f.then.value,
      new_sid: f.new_sid.checked, reset_ids: f.reset_ids.checked, drivers: f.drivers.value || null,
      unattend: um === "custom" ? f.unattend.value : um, ...transport(f),
    };
  }
  function showModes() {
    const mode = form.elements.ipmode.value;
    form.querySelectorAll("[data-ipmode]").forEach((d) => { d.hidden = !d.dataset.ipmode.split(" ").includes(mode); });
    form.querySelectorAll("[data-unattend]").forEach((d) => { d.hidden = form.elements.unattend_mode.value !== d.dataset.unattend; });
    form.querySelectorAll("[data-transport]").forEach((d) => { d.hidden = !d.dataset.transport.split(" ").includes(form.elements.transport.value); });
  }
  form.querySelectorAll('input[name="ipmode"], input[name="unattend_mode"]').forEach((r) => r.addEventListener("change", () => { showModes(); ipPreview(); }));
  form.querySelectorAll('input[name="transport"]').forEach((r) => r.addEventListener("change", showModes)); // checked by Next
  showModes();
  function clearErrors() { form.querySelectorAll(".error").forEach((p) => { p.textContent = ""; }); form.querySelectorAll("[aria-invalid]").forEach((i) => i.removeAttribute("aria-invalid")); }
  function showError(err) {
    const field = (FIELD_OF.find(([re]) => re.test(err.message)) || [null, null])[1];
    const spot = field && form.querySelector(`.error[data-for="${field}"]`);
    const text = sentence(err);
    if (spot) {
      spot.textContent = text;
      const input = form.elements[field];
      if (input && input.setAttribute) { input.setAttribute("aria-invalid", "true"); }
      return STEP_OF[field];
    }
    problem(err);
    return null;
  }
  function planTable(plan) {
    return el("table", {}, el("thead", {}, el("tr", {}, ...["#", "MAC", "Name", "IP"].map((h) => el("th", { scope: "col" }, h)))),
      el("tbody", {}, ...plan.clients.map((c) => el("tr", {}, el("td", {}, c.n), el("td", { class: "mono" }, c.mac), el("td", {}, c.name || "(kept)"), el("td", {}, c.ip || "(DHCP)")))));
  }
  function warnings(plan) { // conflicts with addresses other clients have now, and unused list lines
    const items = [...(plan.conflicts || []).map((c) => `Conflict: ${c}.`), ...(plan.notes || []).map((n) => `${cap(n)}.`)];
    return items.length ? el("ul", { class: "warnings" }, ...items.map((t) => el("li", {}, t))) : null;
  }
  async function plan() { return api("POST", "/api/deployments/plan", body()); }
  async function preview(target) {
    const box = $("#ip-conflicts");
    try {
      const p = await plan();
      clearErrors();
      $(target).replaceChildren(planTable(p));
      const w = warnings(p);
      box.replaceChildren(...(w ? [w] : []));
      box.hidden = !w || target !== "#ip-preview";
    } catch (err) {
      clearErrors();
      if (err.status !== 401) showError(err);
      $(target).replaceChildren();
      box.hidden = true;
    }
  }
  const namePreview = throttled(() => preview("#name-preview"), 300);
  const ipPreview = throttled(() => preview("#ip-preview"), 300);
  $("#name").addEventListener("input", namePreview);
  for (const id of ["#ip", "#ip_list", "#gateway", "#dns"]) $(id).addEventListener("input", ipPreview);
  fileInto($("#ip_list_file"), $("#ip_list"), ipPreview);
  fileInto($("#unattend_file"), $("#unattend"), () => {});

  function show(n) {
    step = n;
    steps.forEach((s) => { s.hidden = Number(s.dataset.step) !== n; });
    [...$("#steps").children].forEach((li, i) => { li.classList.toggle("current", i + 1 === n); li.toggleAttribute("aria-current", i + 1 === n); });
    $("#back").disabled = n === 1;
    $("#next").hidden = n === steps.length;
    $("#start").hidden = n !== steps.length;
    const first = steps[n - 1].querySelector("input:not([disabled]), select");
    if (first) first.focus();
    if (n === 5) preview("#name-preview");
    if (n === 6) preview("#ip-preview");
  }
  async function next() {
    clearErrors(); problem(null);
    if (step === 4) {
      const say = transportProblem(form.elements);
      if (say) { $('.error[data-for="transport"]').textContent = say; return; }
    }
    if (step === 1 && !sel.value) { $('.error[data-for="image"]').textContent = "There is no image to deploy: capture one first."; return; }
    if (step >= 2) {
      try {
        const p = await plan();
        if (step + 1 === steps.length) {
          const b = body();
          const addressing = p.ip_source === "list" ? "addresses from the IP list" : p.ip_source === "range" ? "addresses from the range" : "addresses by DHCP";
          $("#review").replaceChildren(...[
            el("p", {}, `Image ${p.image} (${disksize(p.image_size)}) to ${p.clients.length} client${p.clients.length === 1 ? "" : "s"}, disk rule ${p.disk}, ${b.batch} at a time, then ${THEN_WORDS[b.then]}.`),
            p.transport ? el("p", { id: "review-transport" }, transportLine(p, b.batch)) : null,
            el("p", {}, `${cap(addressing)} · gateway ${p.gateway || "(none)"} · DNS ${(p.dns || []).join(", ") || "(none)"}`),
            el("p", { id: "review-windows" }, windowsLine(p.windows)),
            warnings(p), planTable(p),
            el("p", { class: "muted" }, "The same plan as fleetcast deploy --plan with these options; nothing has started yet."),
          ].filter(Boolean));
        }
      } catch (err) {
        const at = showError(err);
        if (at && at <= step) { show(at); showError(err); return; }
        if (!at) return;
      }
    }
    show(step + 1);
  }
  $("#next").addEventListener("click", next);
  $("#back").addEventListener("click", () => show(step - 1));
  $("#start").addEventListener("click", async () => {
    $("#start").disabled = true;
    try {
      const d = await api("POST", "/api/deployments", body());
      location.assign(`/deployments/${d.deployment}`);
    } catch (err) {
      $("#start").disabled = false;
      const at = showError(err);
      if (at) { show(at); showError(err); }
    }
  });
  form.addEventListener("submit", (e) => { e.preventDefault(); next(); });
  show(1);
  $("#next").disabled = false; // enabled once the handlers are in place
}

// -- deployment page ---------------------------------------------------------------------------
async function deployment() {
  const id = document.body.dataset.deployment;
  let dep = null;
  let only = null; // the MAC whose log is shown, or null for every client
  const phases = {}; // mac -> last phase seen, to log phase changes
  const log = $("#log");
  function overall() {
    // time left: the bytes still to write over the rate they are written at now (queued clients
    // included: they wait for a place in the batch), or the longest ETA when no rate is known yet.
    // A failed client's image counts as not written (the bar is not full after a failure); a
    // cancelled one's only as far as it got
    let done = 0, total = 0, toWrite = 0, rateNow = 0, eta = 0;
    for (const t of dep.clients) {
      const size = t.bytes_total || dataBytes;
      done += t.state === "done" ? size : t.bytes || 0;
      total += t.state === "cancelled" ? t.bytes || 0 : size;
      if (["queued", "running"].includes(t.state)) toWrite += Math.max(0, size - (t.bytes || 0));
      if (t.state === "running") { rateNow += t.rate_bps || 0; eta = Math.max(eta, t.eta_seconds || 0); }
    }
    const left = rateNow > 0 ? toWrite / rateNow : eta;
    return { done, total, left };
  }
  function filterLog() {
    for (const li of log.children) li.hidden = only !== null && li.dataset.mac !== only;
    $("#log-title").textContent = only === null ? "Log" : `Log of ${(dep.clients.find((c) => c.mac === only) || {}).name || only}`;
    $("#log-all").hidden = only === null;
  }
  function draw() {
    $("#dep-state").textContent = dep.state;
    $("#dep-state").className = `state ${dep.state}`;
    const body = $("#targets tbody");
    body.replaceChildren();
    for (const t of dep.clients) {
      const size = t.bytes_total || dataBytes;
      const have = t.state === "done" ? size : t.bytes || 0;
      const showLog = el("button", { type: "button", class: "link", "aria-pressed": only === t.mac ? "true" : "false",
        "aria-label": `log of ${t.name || t.mac}`, onclick: () => { only = only === t.mac ? null : t.mac; filterLog(); draw(); } }, "Log");
      body.append(el("tr", { "data-mac": t.mac, "data-state": t.state }, el("td", {}, t.n), el("td", {}, t.name || ""), el("td", {}, t.ip || ""),
        el("td", { class: "mono" }, t.mac), el("td", {}, el("span", { class: `state ${t.state}` }, t.state)), el("td", {}, t.state === "running" ? t.phase || "" : t.state === "queued" ? "waiting for a place" : ""),
        el("td", {}, size ? progressCell(have, size) : "", size ? ` ${bytes(have)} of ${bytes(size)}` : ""), el("td", {}, t.state === "running" ? rate(t.rate_bps) : ""),
        el("td", {}, t.state === "running" ? duration(t.eta_seconds) : ""), el("td", { class: "err" }, t.error || ""),
        ...columns.map((p) => el("td", { class: "extra" }, p.cell(t))), el("td", {}, showLog)));
    }
    const head = $("#targets thead tr");
    head.querySelectorAll("th.extra").forEach((th) => th.remove());
    for (const p of columns) head.lastElementChild.before(el("th", { scope: "col", class: "extra" }, p.column));
    for (const p of panels) p.draw(dep);
    const { done, total, left } = overall();
    $("#overall").value = total ? done / total : 0;
    const counts = dep.clients.reduce((a, t) => { a[t.state] = (a[t.state] || 0) + 1; return a; }, {});
    const active = ["running", "cancelling"].includes(dep.state);
    $("#overall-text").textContent = `${Object.entries(counts).map(([k, v]) => `${v} ${k}`).join(", ")}${total ? ` · ${bytes(done)} of ${bytes(total)}` : ""}` +
      (active && left ? ` · about ${duration(left)} left` : "") + (dep.transport && dep.transport !== "unicast" ? ` · ${dep.transport}` : "");
    const cancel = $("#cancel");
    if (cancel) cancel.hidden = !["running"].includes(dep.state);
    const retry = $("#retry");
    if (retry) retry.hidden = !(counts.failed && !active && (dep.kind || "deploy") === "deploy"); // a capture is started again from its client
  }
  let dataBytes = 0; // what each client will write (the image's data), until its agent reports a total
  async function load() { dep = await api("GET", `/api/deployments/${id}`); draw(); }
  // the buttons start hidden and are shown by draw(), so they only appear once they work
  const cancel = $("#cancel");
  if (cancel) cancel.addEventListener("click", async () => {
    if (!confirm("Cancel this deployment? Clients already writing stop; their disks are left incomplete.")) return;
    try { await api("POST", `/api/deployments/${id}/cancel`); problem(null); } catch (err) { problem(err); }
    load();
  });
  const retry = $("#retry");
  if (retry) retry.addEventListener("click", async () => {
    try {
      const d = await api("POST", `/api/deployments/${id}/retry`);
      location.assign(`/deployments/${d.deployment}`);
    } catch (err) { problem(err); }
  });
  $("#log-all").addEventListener("click", () => { only = null; filterLog(); draw(); });
  let panels = [], columns = []; // DEPLOYMENT_PANELS made for this deployment (multicast.js, capture.js)
  dep = await api("GET", `/api/deployments/${id}`);
  const ctx = { id, dep: () => dep, reload: () => load(), redraw: () => draw(), card: $("#overall").closest(".card"), canChange: document.body.dataset.role !== "viewer" };
  panels = DEPLOYMENT_PANELS.map((make) => make(ctx, dep)).filter(Boolean);
  columns = panels.filter((p) => p.column);
  await Promise.all(panels.map((p) => (p.ready ? p.ready() : null)));
  draw();
  try { dataBytes = (await api("GET", `/api/images/${encodeURIComponent(dep.image)}`)).data_bytes || 0; draw(); } catch (err) { /* deleted, or a capture's image-to-be */ }
  const reload = coalesced(load, 1000);
  const redraw = coalesced(draw, DRAW_MS);
  function progressed(ev) { // a client-progress payload has every number of the client's row
    const t = dep.clients.find((c) => c.task_id === ev.task_id || c.mac === ev.mac);
    if (!t || !["running", "queued"].includes(t.state)) return false;
    Object.assign(t, { state: "running", phase: ev.phase, bytes: ev.bytes_done, bytes_total: ev.bytes_total,
      rate_bps: ev.rate_bps, eta_seconds: ev.eta_seconds });
    return true;
  }
  function line(ev, text) {
    const t = dep.clients.find((c) => c.mac === ev.mac);
    const li = el("li", { "data-mac": ev.mac || "" }, el("time", { datetime: ev.ts }, new Date(ev.ts).toLocaleTimeString()), " ",
      `${t && t.name ? t.name + " " : ""}${ev.mac || ""} ${text}`);
    li.hidden = only !== null && ev.mac !== only;
    log.append(li);
  }
  live(`/api/events?since=0&deployment_id=${encodeURIComponent(id)}`, (ev) => {
    if (ev.type === "client-progress") {
      if (ev.mac && ev.phase && phases[ev.mac] !== ev.phase) line(ev, `phase ${ev.phase}`);
      if (ev.mac) phases[ev.mac] = ev.phase;
      if (progressed(ev)) { redraw(); return; }
    } else {
      line(ev, `${ev.type}${ev.error ? ": " + ev.error : ""}${ev.phase ? " (" + ev.phase + ")" : ""}`);
    }
    for (const panel of panels) if (panel.event) panel.event(ev);
    reload();
  });
  filterLog();
}

async function deploymentsList() {
  const deps = (await api("GET", "/api/deployments")).deployments;
  const body = $("#deployments tbody");
  for (const d of deps) {
    const counts = Object.entries(d.counts || {}).map(([k, v]) => `${v} ${k}`).join(", ");
    body.append(el("tr", {}, el("td", {}, el("a", { href: `/deployments/${d.deployment}` }, d.deployment)), el("td", {}, d.image),
      el("td", {}, el("span", { class: `state ${d.state}` }, d.state)), el("td", {}, counts), el("td", {}, when(d.created_at)), el("td", {}, d.created_by || "")));
  }
  if (!deps.length) body.append(el("tr", {}, el("td", { colspan: 6 }, "No deployments yet.")));
}

async function imagesPage() {
  const images = (await api("GET", "/api/images")).images;
  const body = $("#images tbody");
  for (const im of images) {
    const open = el("button", { type: "button", class: "link", onclick: () => detail(im.name) }, im.name);
    body.append(el("tr", {}, el("td", {}, open), el("td", {}, disksize(im.disk_size)), el("td", {}, im.os_hint || ""),
      el("td", {}, when(im.created)), el("td", {}, bytes(im.stored_bytes)), el("td", {}, bytes(im.data_bytes)), el("td", {}, im.chunks)));
  }
  if (!images.length) body.append(el("tr", {}, el("td", { colspan: 7 }, "No images in the store.")));
  async function detail(name) {
    const im = await api("GET", `/api/images/${encodeURIComponent(name)}/details`);
    const box = $("#image-detail");
    const dl = el("dl", {});
    const parts = im.partitions || [];
    const found = parts.map((p) => p.os_info).filter(Boolean);
    const rows = [["Disk size", disksize(im.disk_size)], ["Partition table", im.table_label || ""], ["Sector size", `${im.logical_sector_size} B`],
      ["OS found", im.os_hint || (found.length ? found[0].kind || "windows" : "none recognized")], ["Created", when(im.created)], ["Used (captured)", bytes(im.used_bytes)],
      ["Stored bytes", bytes(im.stored_bytes)], ["Bytes unique to this image", `${bytes(im.unique_bytes)} (freed by Delete and the next store gc)`],
      ["Packs", im.packs]];
    for (const os of found) { // what capture recorded about the OS (Windows: version, edition, generalized, SID)
      if (os.error) rows.push(["Windows details", `not readable at capture: ${os.error}`]);
      if (os.version || os.product) rows.push(["Windows version", [os.product, os.version, os.build && `build ${os.build}`].filter(Boolean).join(" ")]);
      if (os.edition) rows.push(["Edition", os.edition]);
      if (os.generalized !== undefined) rows.push(["Generalized (Sysprep)", (os.generalized ? "yes" : "no") + (os.image_state ? ` (${os.image_state})` : "")]);
      if (os.machine_sid) rows.push(["Machine SID", os.machine_sid]);
      if (os.computer_name) rows.push(["Computer name", os.computer_name]);
      if (os.domain) rows.push(["Domain", os.domain]);
    }
    if (im.os_hint === "windows" && !found.length) rows.push(["Windows details", "not recorded when this image was captured"]);
    for (const [k, v] of rows) dl.append(el("dt", {}, k), el("dd", { class: k === "Machine SID" ? "mono" : null }, v));
    box.replaceChildren(el("h2", { tabindex: -1 }, name), dl);
    if (parts.length) {
      box.append(el("h3", {}, "Partitions"), el("div", { class: "scroll" }, el("table", { id: "partitions" },
        el("thead", {}, el("tr", {}, ...["#", "Filesystem", "Start", "Size", "Used", "OS"].map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, ...parts.map((p) => el("tr", {}, el("td", {}, p.number === null ? "(whole disk)" : p.number), el("td", {}, p.fstype),
          el("td", {}, bytes(p.start)), el("td", {}, disksize(p.size)), el("td", {}, bytes(p.used_bytes)),
          el("td", {}, p.os_hint || (p.os_info ? p.os_info.product || p.os_info.kind || "" : ""))))))));
    }
    if (document.body.dataset.role !== "viewer") {
      const status = el("p", { role: "status", "aria-live": "polite" });
      const verify = el("button", { type: "button", onclick: async () => {
        status.textContent = `Verifying ${name}…`;
        try {
          const r = await api("POST", `/api/images/${encodeURIComponent(name)}/verify`);
          status.textContent = r.ok ? `Image ${name} is intact: ${r.chunks} chunks, ${bytes(r.bytes)} verified.`
            : `Image ${name} failed verification: ${r.problems.length} bad chunk(s): ${r.problems[0]}.`;
        } catch (err) { status.textContent = sentence(err); }
      } }, "Verify");
      const del = el("button", { type: "button", onclick: async () => {
        if (!confirm(`Delete image ${name}? Its chunks are freed at the next 'fleetcast store gc'.`)) return;
        try {
          await api("DELETE", `/api/images/${encodeURIComponent(name)}`);
          location.reload();
        } catch (err) { status.textContent = sentence(err); }
      } }, "Delete");
      box.append(el("div", { class: "wizard-nav" }, verify, del), status);
    }
    box.hidden = false;
    box.querySelector("h2").focus();
  }
}

async function usersPage() {
  async function load() {
    const users = (await api("GET", "/api/users")).users;
    $("#users tbody").replaceChildren(...users.map((u) => el("tr", {}, el("td", {}, u.name), el("td", {}, u.role), el("td", {}, when(u.created_at)))));
  }
  const form = $("#add-user");
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    form.querySelectorAll(".error").forEach((p) => { p.textContent = ""; });
    const f = form.elements;
    try {
      await api("POST", "/api/users", { name: f.name.value.trim(), role: f.role.value, password: f.password.value });
      form.reset();
      load();
    } catch (err) {
      const field = /password/i.test(err.message) ? "password" : "name";
      form.querySelector(`.error[data-for="${field}"]`).textContent = sentence(err);
    }
  });
  load();
}

const PAGES = { dashboard, deploy: wizard, deployment, deployments: deploymentsList, images: imagesPage, users: usersPage };
document.addEventListener("DOMContentLoaded", () => {
  const fn = PAGES[document.body.dataset.page];
  // data-ready: the page's handlers are in place (tests wait on it, not on time)
  if (fn) fn().then(() => { document.body.dataset.ready = "1"; }, (err) => problem(err));
});
