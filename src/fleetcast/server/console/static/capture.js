// fleetcast console, network capture (issue 11): "Capture this disk" on a client's inventory panel
// (POST /api/captures, as `fleetcast capture CLIENT NAME --disk RULE [--replace]`), and on a capture's
// page (a capture is a deployment of kind "capture": its progress row is the deployment page's) what
// it read and sent, and a refusal in plain words. Loaded after console.js (its helpers and hooks).
"use strict";

// an agent's error is "MESSAGE (hint: HINT)"; the refusals a technician meets get their own words
const Q = "(['\"])(.*?)\\1"; // a name as Python's repr quotes it
const REFUSALS = [
  [new RegExp(`image ${Q} already exists`), (m) => `An image named ${m[2]} is already on the server. ` +
    "Pick another name, or tick \u201cReplace the image of that name\u201d."],
  [new RegExp(`disk rule ${Q} matches no disk(?:: (.*?))?; disks seen: (.*?)(?: \\(hint:.*)?$`, "s"), (m) =>
    `No disk of this client matches the disk rule ${m[2]}${m[3] ? ` (${m[3]})` : ""}. Its disks: ${m[4]}. ` +
    "Change the rule: 0 is the first fixed disk; or serial=\u2026, model=\u2026, size>=\u2026."],
  [new RegExp(`disk rule ${Q} matches (\\d+) disks`), (m) => `The disk rule ${m[2]} matches ${m[3]} disks, and a capture ` +
    "reads one. Make it more specific: serial=\u2026, or a disk number such as 0."],
  [/([^;:]*?) is encrypted with BitLocker/, (m) => `${cap(m[1])} is encrypted with BitLocker, so fleetcast cannot read which ` +
    "blocks are used. Turn BitLocker off in Windows (manage-bde -off C:, then wait for the decryption to end) and capture again."],
  [/([^;:]*?) holds a hibernated Windows/, (m) => `${cap(m[1])} holds a hibernated Windows: its files are not in a consistent ` +
    "state. Start Windows, turn off Fast Startup (powercfg /h off as administrator), shut it down fully and capture again."],
  [/([^;:]*?) was not shut down cleanly/, (m) => `${cap(m[1])} was not shut down cleanly. ` +
    "Start Windows and shut it down fully (not Fast Startup), then capture again."],
];

function refusal(text) { // plain words for a capture's error (the API's or the agent's)
  if (!text) return "";
  for (const [re, say] of REFUSALS) {
    const m = re.exec(text);
    if (m) return say(m);
  }
  const m = /^(.*?)(?: \(hint: (.*)\))?$/s.exec(text);
  return sentence({ message: m[1], hint: m[2] });
}

function captureForm(c) {
  const box = $("#inventory");
  const old = $("#capture-form");
  if (old) { old.querySelector("input").focus(); return; }
  const who = c.hostname || c.mac;
  const day = new Date().toISOString().slice(0, 10);
  const form = el("form", { id: "capture-form", class: "card", novalidate: true, "aria-labelledby": "capture-title" },
    el("h3", { id: "capture-title" }, `Capture a disk of ${who}`),
    el("p", { class: "muted" }, "The agent reads the disk without writing to it and sends only the chunks the server does not have yet."),
    el("label", { for: "capture-name" }, "Image name"),
    el("input", { id: "capture-name", name: "name", required: true, value: `${who.toLowerCase().replace(/[^a-z0-9._-]+/g, "-")}-${day}` }),
    el("p", { class: "error", "data-for": "capture-name" }),
    el("label", { for: "capture-disk" }, "Disk rule"),
    el("input", { id: "capture-disk", name: "disk", value: "0", required: true, "aria-describedby": "capture-disk-help" }),
    el("p", { id: "capture-disk-help", class: "muted" }, "0 = the first fixed disk (see the disks above); or serial=TEXT, model=Samsung*, size>=120G."),
    el("p", { class: "error", "data-for": "capture-disk" }),
    el("p", {}, el("label", {}, el("input", { type: "checkbox", id: "capture-replace", name: "replace" }), " Replace the image of that name")),
    el("p", { class: "error", "data-for": "capture" }),
    el("div", { class: "wizard-nav" }, el("button", { type: "submit", class: "primary" }, "Start capture"),
      el("button", { type: "button", onclick: () => form.remove() }, "Close")));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    form.querySelectorAll(".error").forEach((p) => { p.textContent = ""; });
    form.querySelectorAll("[aria-invalid]").forEach((i) => i.removeAttribute("aria-invalid"));
    const f = form.elements, go = form.querySelector("button[type=submit]");
    go.disabled = true;
    try {
      const r = await api("POST", "/api/captures", { client: c.mac, name: f.name.value.trim(), disk: f.disk.value.trim(), replace: f.replace.checked });
      location.assign(`/deployments/${r.capture}`);
    } catch (err) {
      go.disabled = false;
      const field = /disk rule|^disk/i.test(err.message) ? "capture-disk" : /image|name/i.test(err.message) ? "capture-name" : "capture";
      form.querySelector(`.error[data-for="${field}"]`).textContent = refusal(err.message + (err.hint ? ` (hint: ${err.hint})` : ""));
      if (f[field === "capture-disk" ? "disk" : "name"] && field !== "capture") f[field === "capture-disk" ? "disk" : "name"].setAttribute("aria-invalid", "true");
    }
  });
  box.append(form);
  form.querySelector("input").focus();
}

CLIENT_ACTIONS.push((c, canChange) => (canChange && c.online
  ? el("button", { type: "button", id: "capture-open", onclick: () => captureForm(c) }, "Capture this disk…") : null));

// the capture's own numbers on its deployment page
DEPLOYMENT_PANELS.push((ctx, dep) => {
  if (dep.kind !== "capture") return null;
  $("h1").firstChild.textContent = `Capture ${ctx.id} `;
  const box = el("section", { id: "capture", class: "card", "aria-live": "polite" });
  ctx.card.before(box);
  let view = null, who = null; // who: the client's name, once known
  async function load() {
    try { view = await api("GET", `/api/captures/${ctx.id}`); } catch (err) { problem(err); return; }
    if (who === null && view.client_id) who = await api("GET", `/api/clients/${view.client_id}`).then((c) => c.hostname || "", () => "");
    render();
  }
  function render() {
    const v = view;
    const rows = [["Image", v.image + (v.replace ? " (replaces the image of that name)" : "")], ["Client", v.client],
      ["Disk", `${v.disk || "not chosen yet"} (rule ${v.disk_rule})`], ["Read", bytes(v.bytes_read || v.bytes_done)],
      ["Sent to the server", bytes(v.bytes_sent)],
      ["Chunks", `${v.chunks_new} new, ${v.chunks_known} already on the server`]];
    if (v.seconds !== null && v.seconds !== undefined) rows.push(["Took", duration(v.seconds)]);
    if (v.image_id) rows.push(["Image id", v.image_id]);
    const dl = el("dl", {});
    for (const [k, val] of rows) dl.append(el("dt", {}, k), el("dd", { class: k === "Image id" ? "mono" : null }, val));
    const said = v.error && v.state !== "cancelled" ? el("p", { id: "capture-refusal", class: "problem", role: "alert" }, refusal(v.error)) : null;
    const done = v.state === "done" ? el("p", { id: "capture-done" }, `Image ${v.image} is on the server: `,
      el("a", { href: "/images" }, "see it in Images"), ".") : null;
    box.replaceChildren(el("h2", {}, `Network capture of ${who ? `${who} (${v.client})` : v.client}`), dl, ...[said, done].filter(Boolean));
  }
  const later = coalesced(load, 2000); // progress events: the numbers at most every 2 s
  return {
    ready: load,
    draw() {},
    event(ev) { if (ev.type === "client-progress") later(); else load(); },
  };
});
