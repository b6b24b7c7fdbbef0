// ring.js - the ring page: polls /ring.json and draws the members, their ranges on
// the ring, state, load and disk use. No libraries: the page is embedded in ellipticsd.
"use strict";

const POLL_MS = 1500;
const SVG = "http://www.w3.org/2000/svg";

// Node colours: hues a golden angle apart, by the node's place in the (sorted)
// list, so neighbours never look alike.
function colorOf(index, state) {
  if (state !== "up") return state === "down" ? "#c9c9c9" : "#e8e8e8";
  return "hsl(" + Math.round((index * 137.508 + 210) % 360) + ", 62%, 50%)";
}

// The first 13 hex digits of an ID as a fraction of the ring (exact in a double).
function pos(hex) {
  return parseInt(hex.slice(0, 13), 16) / Math.pow(16, 13);
}

function bytes(n) {
  if (n === undefined || n === null) return "–";
  const u = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
  let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : String(n)) + " " + u[i];
}

function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = text;
  return e;
}

function arc(a0, a1, r) {
  const t0 = 2 * Math.PI * a0 - Math.PI / 2, t1 = 2 * Math.PI * a1 - Math.PI / 2;
  const large = a1 - a0 > 0.5 ? 1 : 0;
  return "M " + (r * Math.cos(t0)).toFixed(3) + " " + (r * Math.sin(t0)).toFixed(3) +
         " A " + r + " " + r + " 0 " + large + " 1 " +
         (r * Math.cos(t1)).toFixed(3) + " " + (r * Math.sin(t1)).toFixed(3);
}

function drawRing(nodes) {
  const svg = document.getElementById("ring");
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  const base = document.createElementNS(SVG, "circle");
  base.setAttribute("r", "100");
  base.setAttribute("fill", "none");
  base.setAttribute("stroke", "#eef0f4");
  base.setAttribute("stroke-width", "22");
  svg.appendChild(base);
  nodes.forEach((n, index) => {
    if (n.state === "left") return;
    for (const r of n.ranges) {
      let a0 = pos(r[0]), a1 = pos(r[1]);
      if (a1 < a0) a1 += 1;              // the range wraps past the top
      if (a1 - a0 >= 1) a1 = a0 + 0.9999;  // a single range covers everything
      const p = document.createElementNS(SVG, "path");
      p.setAttribute("d", arc(a0, a1, 100));
      p.setAttribute("fill", "none");
      p.setAttribute("stroke", colorOf(index, n.state));
      p.setAttribute("stroke-width", "22");
      p.setAttribute("data-node", n.addr);
      svg.appendChild(p);
    }
  });
  const t = document.createElementNS(SVG, "text");
  t.setAttribute("text-anchor", "middle");
  t.setAttribute("dy", "0.35em");
  t.setAttribute("font-size", "16");
  t.textContent = nodes.filter(n => n.state === "up").length + " / " +
                  nodes.filter(n => n.state !== "left").length + " up";
  svg.appendChild(t);
}

function render(ring) {
  const c = ring.counts;
  const sum = document.getElementById("summary");
  sum.textContent = c.nodes + (c.nodes === 1 ? " node: " : " nodes: ") + c.up + " up, " + c.down + " down, " + c.left + " left";
  sum.dataset.nodes = c.nodes;
  sum.dataset.up = c.up;
  sum.dataset.down = c.down;
  sum.dataset.left = c.left;
  const nodes = ring.nodes.slice().sort((a, b) => a.addr < b.addr ? -1 : a.addr > b.addr ? 1 : 0);
  drawRing(nodes);
  const tbody = document.querySelector("#nodes tbody");
  while (tbody.firstChild) tbody.removeChild(tbody.firstChild);
  nodes.forEach((n, index) => {
    const tr = el("tr", {"class": "node " + n.state, "data-addr": n.addr, "data-state": n.state});
    const sw = el("td");
    sw.appendChild(el("span", {"class": "swatch", "style": "background:" + colorOf(index, n.state)}));
    tr.appendChild(sw);
    const name = el("td", {"title": "node ID " + n.id + "…"}, n.addr);
    if (n.self) name.appendChild(el("span", {"class": "self"}, "this node"));
    tr.appendChild(name);
    tr.appendChild(el("td", {}, n.zone || "–"));
    const st = el("td");
    let label = n.state;
    if (n.state === "up" && n.reachable === false) label = "up (no answer)";
    st.appendChild(el("span", {"class": "state " + n.state}, label));
    tr.appendChild(st);
    tr.appendChild(el("td", {"class": "num"}, (100 * n.share).toFixed(1) + " %"));
    tr.appendChild(el("td", {"class": "num"}, String(n.ranges.length)));
    const live = n.state === "up" && n.reachable !== false;
    tr.appendChild(el("td", {"class": "num load"}, live && n.ops !== null ? n.ops.toFixed(1) : "–"));
    tr.appendChild(el("td", {"class": "num"}, live && n.objects !== undefined ? String(n.objects) : "–"));
    tr.appendChild(el("td", {"class": "num"}, live ? bytes(n.disk_bytes) : "–"));
    const free = el("td", {"class": "num"}, live ? bytes(n.disk_free) : "–");
    if (live && n.disk_free !== undefined) {
      const total = n.disk_bytes + n.disk_free;
      const bar = el("span", {"class": "bar", "title": "used share of the disk"});
      const fill = el("span", {"style": "width:" + (total ? 100 * n.disk_bytes / total : 0).toFixed(1) + "%"});
      bar.appendChild(fill);
      free.appendChild(bar);
    }
    tr.appendChild(free);
    tbody.appendChild(tr);
  });
  document.getElementById("status").textContent =
    "as seen by " + ring.listen + " · updated " + new Date().toLocaleTimeString();
  document.body.dataset.loaded = "1";
}

function poll() {
  fetch("/ring.json", {cache: "no-store"})
    .then(r => { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
    .then(render)
    .catch(e => { document.getElementById("status").textContent = "cannot reach the node: " + e.message; })
    .finally(() => setTimeout(poll, POLL_MS));
}

poll();
