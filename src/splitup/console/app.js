// The SplitUp console: polls the gateway's JSON API and redraws; no framework, no build step.
"use strict";

const SOL = 1e9;
const POLL_MS = 1500;

const el = (tag, attrs = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
};
const sol = (lamports) => (lamports / SOL).toFixed(6);
const short = (s) => (s ? s.slice(0, 4) + "…" + s.slice(-4) : "-");
const mib = (b) => (b >= 2 ** 30 ? (b / 2 ** 30).toFixed(2) + " GiB" : (b / 2 ** 20).toFixed(1) + " MiB");
const chip = (text, cls, testid) => {
  const c = el("span", { class: "chip " + (cls || text), text });
  if (testid) c.dataset.testid = testid;
  return c;
};

async function getJSON(path) {
  const r = await fetch(path, { cache: "no-store" });
  if (!r.ok) throw new Error(path + ": HTTP " + r.status);
  return r.json();
}

let nodeNames = {};

function drawOverview(o) {
  const box = document.getElementById("overview");
  box.replaceChildren(
    el("span", { text: "slot " + o.slot }),
    el("span", { text: "verification rate " + (o.config.verify_rate_bps / 100).toFixed(1) + "%" }),
    el("span", { text: "treasury " + sol(o.config.treasury) + " SOL" }),
    el("span", { text: o.counts.nodes + " nodes, " + o.counts.models + " models, " + o.counts.jobs_done + " jobs done" }),
    el("span", { class: "mono", text: "wallet " + short(o.wallet) + " " + sol(o.balance) + " SOL" }),
  );
}

function drawModels(models) {
  const box = document.getElementById("models");
  const select = document.getElementById("ask-model");
  const chosen = select.value;
  select.replaceChildren(...models.filter((m) => m.kind === "decoder").map((m) => el("option", { value: m.name, text: m.name })));
  if (chosen) select.value = chosen;
  box.replaceChildren(...models.map((m) => {
    const biggest = Math.max(...m.tasks.map((t) => t.vram_bytes), 1);
    const rows = m.tasks.map((t) => {
      const tr = el("tr", { class: "task-row" },
        el("td", { text: "#" + t.index }),
        el("td", { class: "mono", text: t.task_id.slice(0, 12) }),
        el("td", { text: t.layers.length ? t.layers[0] + " … " + t.layers[t.layers.length - 1] : "" }),
        el("td", { text: mib(t.vram_bytes) }),
        el("td", {}, el("div", { class: "bar", style: "width:" + Math.round(160 * t.vram_bytes / biggest) + "px" })),
        el("td", { text: sol(t.price) + " SOL" }),
        el("td", { text: t.holders.map((h) => nodeNames[h] || short(h)).join(", ") || "no node" }));
      tr.dataset.testid = "task-row";
      return tr;
    });
    const div = el("div", { class: "model" },
      el("strong", { text: m.name }),
      el("span", { class: "muted", text: "  " + m.tasks.length + " tasks, " + mib(m.vram_bytes) + " VRAM in all, " + mib(m.weight_bytes) + " of weights · " + m.description }),
      el("table", { class: "grid tasks" }, el("tbody", {}, ...rows)));
    div.dataset.testid = "model";
    return div;
  }));
}

function drawNodes(nodes) {
  nodeNames = {};
  const body = document.querySelector("#nodes tbody");
  body.replaceChildren(...nodes.map((n) => {
    const name = n.name || short(n.address);
    nodeNames[n.address] = name;
    const hb = n.heartbeat;
    const beat = hb.alive ? chip("alive " + hb.age_s + "s", "alive", "heartbeat") : chip(hb.age_s == null ? "no heartbeat" : "silent " + hb.age_s + "s", "dead", "heartbeat");
    const cb = n.chain_heartbeat;
    const onChain = chip("chain " + cb.age_slots + " slots ago" + (cb.fresh ? "" : " (stale)"), cb.fresh ? "alive" : "dead", "chain-heartbeat");
    onChain.title = "last HEARTBEAT at slot " + cb.slot + " (window " + (cb.window_slots || "off") + "); v" + cb.version + ", " + cb.free_sessions + " free sessions, " + (cb.engines.join(", ") || "no engines");
    const specs = n.specialized.map((s) => chip((s.model || "?") + " #" + (s.index ?? "?"), "spec"));
    const tr = el("tr", { class: "node-row" },
      el("td", {}, el("strong", { text: name }), el("div", { class: "mono muted", text: short(n.address) })),
      el("td", { class: "mono", text: n.endpoint }),
      el("td", {}, beat, onChain, el("div", { class: "muted", text: hb.hops_done != null ? hb.hops_done + " hops" : "" })),
      el("td", { text: sol(n.stake) }),
      el("td", { text: sol(n.locked) }),
      el("td", { text: mib(n.vram) }),
      el("td", {}, ...specs),
      el("td", { text: n.reputation.tasks_done }),
      el("td", { text: n.reputation.verified }),
      el("td", { text: n.reputation.failed }));
    tr.dataset.testid = "node-row";
    tr.dataset.address = n.address;
    return tr;
  }));
}

function drawJobs(jobs) {
  const body = document.querySelector("#jobs tbody");
  body.replaceChildren(...jobs.map((j) => {
    const tasks = (j.tasks || []).map((t) => {
      const who = t.node ? (nodeNames[t.node] || short(t.node)) : "-";
      const checked = t.validator ? " ✓ by " + (nodeNames[t.validator] || short(t.validator)) : "";
      const s = chip("#" + t.index + " " + t.status, t.status, "task-status");
      s.dataset.status = t.status;
      s.title = "node " + who + checked + "; verdict " + t.verdict + "; paid node " + sol(t.node_paid) + ", validator " + sol(t.validator_paid) + ", fee " + sol(t.fee);
      const v = t.verdict !== "none" ? chip(t.verdict, t.verdict, "verdict") : chip(t.sampled ? "sampled" : (t.status === "SETTLED" ? "not drawn" : "…"), "none");
      return el("tr", {}, el("td", {}, s), el("td", { text: who }), el("td", {}, v), el("td", { text: t.validator ? (nodeNames[t.validator] || short(t.validator)) : "" }), el("td", { text: sol(t.node_paid + t.validator_paid) }));
    });
    const tr = el("tr", { class: "job-row" },
      el("td", {}, el("span", { class: "mono", text: short(j.address) }), el("div", { class: "muted", text: (j.prompt || "").slice(0, 60) })),
      el("td", { text: j.model || "" }),
      el("td", {}, chip(j.state === "wound_up" ? "failed, refunded" : j.state, j.state === "closed" ? "SETTLED" : (j.state === "failed" || j.state === "wound_up") ? "FAILED" : "SAMPLED", "job-state"),
        j.error ? el("div", { class: "muted", text: j.error.slice(0, 120) }) : ""),
      el("td", { text: j.tokens_per_s != null ? j.tokens_per_s : "" }),
      el("td", {}, el("table", { class: "tasks" }, el("tbody", {}, ...tasks))),
      el("td", { text: j.verified ?? "" }),
      el("td", { text: j.deposit != null ? sol(j.deposit) : "" }),
      el("td", { text: j.paid != null ? sol(j.paid) : "" }),
      el("td", { text: j.closed ? sol(j.refund) : "" }));
    tr.dataset.testid = "job-row";
    tr.dataset.address = j.address;
    tr.dataset.state = j.state;
    return tr;
  }));
}

async function refresh() {
  try {
    const [o, nodes, models, jobs] = await Promise.all(
      ["/api/overview", "/api/nodes", "/api/models", "/api/jobs"].map(getJSON));
    drawOverview(o);
    drawNodes(nodes);  // first: the other tables name nodes
    drawModels(models);
    drawJobs(jobs);
    document.getElementById("updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (err) {
    document.getElementById("updated").textContent = "offline: " + err.message;
  }
}

// Streams a chat completion from the gateway's OpenAI API (server-sent events) into the answer box.
async function ask(ev) {
  ev.preventDefault();
  const out = document.getElementById("ask-out");
  const body = {
    model: document.getElementById("ask-model").value,
    messages: [{ role: "user", content: document.getElementById("ask-prompt").value }],
    max_tokens: Number(document.getElementById("ask-max").value) || 32,
    temperature: 0, stream: true,
  };
  out.textContent = "";
  delete out.dataset.done;
  const r = await fetch("/v1/chat/completions", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) });
  if (!r.ok || !r.body) { out.textContent = "error: " + (await r.text()); return; }
  const reader = r.body.getReader();
  const dec = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += dec.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const line = buf.slice(0, cut).trim();
      buf = buf.slice(cut + 2);
      if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
      const msg = JSON.parse(line.slice(6));
      if (msg.error) { out.textContent += "\n[error] " + msg.error.message; continue; }
      const d = msg.choices[0].delta || {};
      if (d.content) out.textContent += d.content;
    }
  }
  out.dataset.done = "1";
  refresh();
}

document.getElementById("ask").addEventListener("submit", ask);
refresh();
setInterval(refresh, POLL_MS);
