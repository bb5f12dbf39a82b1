// fleetcast console, multicast (issue 10): on a multicast deployment's page, its sessions (one per
// batch) from GET /api/deployments/ID/multicast; while a session waits, its start rules (min clients,
// max wait) are changed and "Start now" is pressed through POST of the same path; per client, the
// transport it finished with and the packs it repaired by HTTP (event client-transport, or the
// "transport: ..." line of its result). Loaded after console.js (its helpers and hooks).
"use strict";

const TRANSPORT_LINE = /^transport: (\w+) \((\d+) packs by multicast, (\d+) repaired by HTTP; multicast (.*)\)/;
const MEMBER_WORDS = { joined: "in the stream", dropped: "dropped from the stream: finishing by HTTP", left: "left the stream" };

function finishedWith(r) { // {transport, packs_multicast, packs_repaired, outcome} -> words
  const n = Number(r.packs_repaired);
  return `${r.transport}, ${n} pack${n === 1 ? "" : "s"} repaired by HTTP` +
    (r.transport !== "multicast" && r.outcome ? ` (multicast ${r.outcome})` : "");
}

DEPLOYMENT_PANELS.push((ctx, dep) => {
  if (dep.transport !== "multicast") return null;
  const results = {}; // mac -> how it finished (client-transport payload)
  const late = {}; // mac -> why it takes the packs by HTTP (client-multicast-late / -dropped)
  const since = {}; // session id -> when it began waiting (multicast-waiting's timestamp)
  let view = null;
  const box = el("section", { id: "multicast", class: "card", "aria-labelledby": "multicast-title" });
  const status = el("p", { id: "multicast-status", role: "status", "aria-live": "polite" });
  ctx.card.after(box);

  async function load() {
    try { view = await api("GET", `/api/deployments/${ctx.id}/multicast`); } catch (err) { status.textContent = sentence(err); return; }
    render();
    ctx.redraw(); // the members' states in the Transport column
  }
  const later = coalesced(load, 1000);
  function sessionText(s, joined) {
    if (s.state === "waiting") {
      const at = since[s.session] ? ` (at ${new Date(Date.parse(since[s.session]) + 1000 * s.max_wait).toLocaleTimeString()} at the latest)` : "";
      return `Waiting: ${joined} of ${s.min_clients} client${s.min_clients === 1 ? "" : "s"} joined; the stream starts when ` +
        `${s.min_clients} have joined or ${duration(s.max_wait)} (min:s) after the first joined${at}.`;
    }
    const sent = ` ${bytes(s.bytes_sent)} and ${s.packs_sent} pack${s.packs_sent === 1 ? "" : "s"} sent`;
    if (s.cycle > 1 && s.state === "waiting") return `Cycle ${s.cycle} (what the clients still lack, ${s.packs_to_send} packs): waiting for the stream before it to end.`;
    if (s.state === "starting" || s.state === "streaming") return `${s.cycle > 1 ? `Cycle ${s.cycle}: s` : "S"}treaming to ${joined} client${joined === 1 ? "" : "s"} (group ${s.group}:${s.port}):${sent}.`;
    return `${cap(s.state)}:${sent}${s.error ? `; ${s.error}` : ""}.`;
  }
  const forms = {}; // session id -> its rules form, kept across redraws (what is typed stays)
  function rulesForm(s, joined) {
    if (forms[s.session]) { forms[s.session].update(joined); return forms[s.session].node; }
    const min = el("input", { id: "mc-min", type: "number", min: 1, value: s.min_clients });
    const wait = el("input", { id: "mc-wait", type: "number", min: 0, value: s.max_wait });
    const error = el("p", { class: "error", id: "mc-error" });
    const send = async (body, what) => {
      error.textContent = "";
      try {
        view = await api("POST", `/api/deployments/${ctx.id}/multicast`, body);
        status.textContent = what;
        render();
      } catch (err) { error.textContent = sentence(err); }
    };
    const num = (v) => (v.trim() === "" ? null : Number(v));
    const change = el("button", { type: "button", id: "mc-change", onclick: () => {
      send({ min_clients: num(min.value), max_wait: num(wait.value) }, "Start rules changed.");
    } }, "Change the start rules");
    // "start now": this session starts with the clients that joined; the stored rules stay
    let count = joined;
    const now = el("button", { type: "button", id: "mc-start", class: "primary", onclick: () => {
      send({ start_now: true }, `Starting the stream now with ${count} client${count === 1 ? "" : "s"}.`);
    } }, "Start now");
    const none = el("p", { class: "muted" }, "No client has joined yet: Start now needs at least one.");
    const node = el("div", { id: "mc-rules" }, el("label", { for: "mc-min" }, "Start when this many clients have joined"), min,
      el("label", { for: "mc-wait" }, "Or this many seconds after the first joined, at most"), wait, error,
      el("div", { class: "wizard-nav" }, change, now), none);
    const update = (n) => { count = n; now.disabled = n === 0; none.hidden = n !== 0; };
    update(joined);
    forms[s.session] = { node, update };
    return node;
  }
  function render() {
    const sessions = view ? view.sessions : [];
    const o = view ? view.options : {};
    const parts = [el("h2", { id: "multicast-title" }, "Multicast"),
      el("p", { class: "muted" }, `Rules: start at ${o.min_clients || "the batch's size"} joined or after ${duration(o.max_wait)} (min:s); ` +
        (o.drop_below ? `a receiver slower than ${rate(o.drop_below)} is dropped and finishes by HTTP.` : "no receiver is dropped for being slow."))];
    if (!sessions.length) parts.push(el("p", { id: "multicast-session" }, "No session yet: it begins when the first client of a batch joins."));
    sessions.forEach((s, i) => {
      const joined = s.members.filter((m) => m.state === "joined").length;
      parts.push(el("p", { id: i === sessions.length - 1 ? "multicast-session" : null, "data-state": s.state },
        sessions.length > 1 ? `Batch ${i + 1}: ` : "", sessionText(s, joined)));
      if (s.state === "waiting" && !(s.cycle > 1) && ctx.canChange && ctx.dep().state === "running") parts.push(rulesForm(s, joined));
    });
    box.replaceChildren(...parts, status);
  }
  return {
    ready: load,
    column: "Transport",
    cell(t) {
      const line = (t.changes || []).map((c) => TRANSPORT_LINE.exec(c)).find(Boolean);
      const r = results[t.mac] || (line && { transport: line[1], packs_multicast: line[2], packs_repaired: line[3], outcome: line[4] });
      if (r) return finishedWith(r);
      if (late[t.mac]) return late[t.mac];
      const member = view && view.sessions.flatMap((s) => s.members).filter((m) => m.mac === t.mac).pop();
      return member ? MEMBER_WORDS[member.state] || member.state : "";
    },
    draw() {},
    event(ev) {
      if (ev.type === "multicast-waiting") since[ev.session_id] = ev.ts;
      if (ev.type === "client-transport") results[ev.mac] = ev;
      if (ev.type === "client-multicast-late") {
        late[ev.mac] = ev.choice === "cycle" ? `waits for cycle ${ev.cycle || 2} of the stream (${ev.reason || "late"})` : `by HTTP (${ev.reason || "late"})`;
      }
      if (ev.type === "client-multicast-dropped") late[ev.mac] = "dropped from the stream: finishing by HTTP";
      if (ev.type.startsWith("multicast-") || ev.type.startsWith("client-multicast-") || ev.type === "client-transport") later();
    },
  };
});
