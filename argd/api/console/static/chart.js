// A small SVG chart module: line charts of per-epoch series and grouped bar charts. Series differ by dash
// pattern and marker shape as well as by colour, so a chart still reads in greyscale; every chart carries a
// text title and legend, and a <title> per point for screen readers and hover.

const NS = "http://www.w3.org/2000/svg";
const COLOURS = ["#1d3557", "#e76f51", "#2a9d8f", "#8d5a97", "#b08900", "#5c6b73"];
const DASHES = ["", "6 3", "2 3", "8 3 2 3", "1 4", "10 4"];
const PATTERNS = ["solid", "hatch", "dots", "cross", "vertical", "horizontal"];

function el(name, attrs = {}, parent) {
  const node = document.createElementNS(NS, name);
  for (const [key, value] of Object.entries(attrs)) node.setAttribute(key, String(value));
  if (parent) parent.append(node);
  return node;
}

function text(parent, x, y, content, attrs = {}) {
  const node = el("text", { x, y, ...attrs }, parent);
  node.textContent = content;
  return node;
}

function niceRange(values) {
  let lo = Math.min(...values);
  let hi = Math.max(...values);
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) return [0, 1];
  if (lo === hi) {
    const pad = Math.abs(lo) * 0.1 || 1;
    return [lo - pad, hi + pad];
  }
  const pad = (hi - lo) * 0.05;
  return [lo >= 0 && lo - pad < 0 ? 0 : lo - pad, hi + pad];
}

function ticks(lo, hi, count = 5) {
  // Round steps (1, 2 or 5 times a power of ten) covering [lo, hi]: axis labels people can read.
  const raw = (hi - lo) / Math.max(count - 1, 1);
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw) || raw;
  const start = Math.floor(lo / step) * step;
  const end = Math.ceil(hi / step) * step;
  const out = [];
  for (let v = start; v <= end + step / 2; v += step) out.push(Number(v.toPrecision(12)));
  return out;
}

function format(value) {
  const magnitude = Math.abs(value);
  if (magnitude !== 0 && (magnitude < 0.01 || magnitude >= 1e4)) return value.toExponential(1);
  return Number(value.toFixed(magnitude < 1 ? 3 : 2)).toString();
}

function marker(parent, shape, x, y, colour) {
  const size = 3.2;
  if (shape === 0) return el("circle", { cx: x, cy: y, r: size, fill: colour }, parent);
  if (shape === 1) return el("rect", { x: x - size, y: y - size, width: 2 * size, height: 2 * size, fill: "#fff", stroke: colour, "stroke-width": 1.5 }, parent);
  if (shape === 2) return el("path", { d: `M${x} ${y - size - 1}L${x + size + 1} ${y + size}L${x - size - 1} ${y + size}Z`, fill: colour }, parent);
  return el("path", { d: `M${x - size} ${y - size}L${x + size} ${y + size}M${x - size} ${y + size}L${x + size} ${y - size}`, stroke: colour, "stroke-width": 1.8 }, parent);
}

function frame(title, width, height) {
  const figure = document.createElement("figure");
  figure.className = "chart";
  const caption = document.createElement("figcaption");
  caption.textContent = title;
  figure.append(caption);
  const svg = el("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": title });
  figure.append(svg);
  return { figure, svg };
}

/**
 * Line chart. `series`: [{name, points: [[x, y], ...]}]; options: {title, xLabel, width, height}.
 * Returns a <figure>; `figure.dataset.points` counts the plotted points (tests read it).
 */
export function lineChart(series, { title, xLabel = "epoch", width = 440, height = 220, empty = "No epochs yet" } = {}) {
  const plotted = series.filter((s) => s.points.length);
  const rows = legendRows(plotted.map((s) => s.name), 54, width);
  const m = { left: 54, right: 12, top: 12, bottom: 40 + rows.length * 16 };
  const { figure, svg } = frame(title, width, height + m.bottom);
  height += m.bottom;
  const all = plotted.flatMap((s) => s.points);
  figure.dataset.points = String(all.length);
  figure.dataset.series = String(plotted.length);
  if (!all.length) {
    text(svg, width / 2, height / 2, empty, { "text-anchor": "middle", class: "empty" });
    return figure;
  }
  const [x0, x1] = niceRange(all.map((p) => p[0]));
  const yTicks = ticks(...niceRange(all.map((p) => p[1])));
  const [y0, y1] = [yTicks[0], yTicks[yTicks.length - 1]];
  const w = width - m.left - m.right;
  const h = height - m.top - m.bottom;
  const sx = (x) => m.left + ((x - x0) / (x1 - x0)) * w;
  const sy = (y) => m.top + h - ((y - y0) / (y1 - y0)) * h;
  for (const v of yTicks) {
    el("line", { x1: m.left, x2: m.left + w, y1: sy(v), y2: sy(v), class: "grid" }, svg);
    text(svg, m.left - 6, sy(v) + 4, format(v), { "text-anchor": "end" });
  }
  const xs = [...new Set(all.map((p) => p[0]))].sort((a, b) => a - b);
  const step = Math.max(1, Math.ceil(xs.length / 8));
  xs.filter((_, i) => i % step === 0).forEach((x) => text(svg, sx(x), m.top + h + 14, format(x), { "text-anchor": "middle" }));
  el("line", { x1: m.left, x2: m.left + w, y1: m.top + h, y2: m.top + h, class: "axis" }, svg);
  el("line", { x1: m.left, x2: m.left, y1: m.top, y2: m.top + h, class: "axis" }, svg);
  text(svg, m.left + w / 2, m.top + h + 28, xLabel, { "text-anchor": "middle" });
  plotted.forEach((s, i) => {
    const colour = COLOURS[i % COLOURS.length];
    const d = s.points.map((p, j) => `${j ? "L" : "M"}${sx(p[0]).toFixed(1)} ${sy(p[1]).toFixed(1)}`).join("");
    el("path", { d, fill: "none", stroke: colour, "stroke-width": 2, "stroke-dasharray": DASHES[i % DASHES.length] }, svg);
    for (const [x, y] of s.points) {
      const point = marker(svg, i % 4, sx(x), sy(y), colour);
      el("title", {}, point).textContent = `${s.name}, ${xLabel} ${format(x)}: ${format(y)}`;
    }
  });
  legend(svg, rows, m.top + h + 46, (g, i, x, y) => {
    const colour = COLOURS[i % COLOURS.length];
    el("line", { x1: x, x2: x + 22, y1: y, y2: y, stroke: colour, "stroke-width": 2, "stroke-dasharray": DASHES[i % DASHES.length] }, g);
    marker(g, i % 4, x + 11, y, colour);
  });
  return figure;
}

function legendRows(names, x, width) {
  // Item positions, wrapped onto as many rows as the chart's width needs.
  const rows = [[]];
  let cursor = x;
  names.forEach((name, i) => {
    const itemWidth = 34 + name.length * 6.5;
    if (cursor + itemWidth > width - 8 && rows[rows.length - 1].length) {
      rows.push([]);
      cursor = x;
    }
    rows[rows.length - 1].push({ name, i, x: cursor });
    cursor += itemWidth;
  });
  return rows;
}

function legend(svg, rows, top, swatch) {
  const g = el("g", { class: "legend" }, svg);
  rows.forEach((row, r) => {
    const y = top + r * 16;
    for (const item of row) {
      swatch(g, item.i, item.x, y - 4);
      text(g, item.x + 27, y, item.name);
    }
  });
}

function patterns(svg) {
  // Fill patterns for bars: the greyscale reading of which bar is which.
  const defs = el("defs", {}, svg);
  const ids = PATTERNS.map((kind, i) => {
    const colour = COLOURS[i % COLOURS.length];
    const id = `pat-${kind}-${Math.random().toString(36).slice(2, 8)}`;
    const p = el("pattern", { id, width: 6, height: 6, patternUnits: "userSpaceOnUse" }, defs);
    el("rect", { width: 6, height: 6, fill: kind === "solid" ? colour : "#fff" }, p);
    if (kind === "hatch") el("path", { d: "M0 6L6 0", stroke: colour, "stroke-width": 2 }, p);
    if (kind === "dots") el("circle", { cx: 3, cy: 3, r: 1.6, fill: colour }, p);
    if (kind === "cross") el("path", { d: "M0 0L6 6M6 0L0 6", stroke: colour, "stroke-width": 1.4 }, p);
    if (kind === "vertical") el("path", { d: "M3 0V6", stroke: colour, "stroke-width": 2 }, p);
    if (kind === "horizontal") el("path", { d: "M0 3H6", stroke: colour, "stroke-width": 2 }, p);
    return id;
  });
  return (i) => `url(#${ids[i % ids.length]})`;
}

/**
 * Grouped bar chart of values in [0, 1] shown as percent. `groups`: ["ACC", "ASR", ...]; `bars`:
 * [{name, values: [v|null per group]}]. Missing values are marked "n/a".
 */
export function barChart(groups, bars, { title, width = 440, height = 220, max = 1, percent = true } = {}) {
  const rows = legendRows(bars.map((b) => b.name), 44, width);
  const m = { left: 44, right: 12, top: 14, bottom: 30 + rows.length * 16 };
  height += m.bottom;
  const { figure, svg } = frame(title, width, height);
  const fill = patterns(svg);
  const w = width - m.left - m.right;
  const h = height - m.top - m.bottom;
  const sy = (v) => m.top + h - (v / max) * h;
  for (let i = 0; i <= 4; i += 1) {
    const v = (max * i) / 4;
    el("line", { x1: m.left, x2: m.left + w, y1: sy(v), y2: sy(v), class: "grid" }, svg);
    text(svg, m.left - 6, sy(v) + 4, percent ? `${Math.round(v * 100)}%` : format(v), { "text-anchor": "end" });
  }
  const groupWidth = w / Math.max(groups.length, 1);
  const barWidth = Math.min(28, (groupWidth * 0.8) / Math.max(bars.length, 1));
  let drawn = 0;
  groups.forEach((group, gi) => {
    const start = m.left + gi * groupWidth + (groupWidth - barWidth * bars.length) / 2;
    bars.forEach((bar, bi) => {
      const value = bar.values[gi];
      const x = start + bi * barWidth;
      if (value === null || value === undefined) {
        text(svg, x + barWidth / 2, m.top + h - 4, "n/a", { "text-anchor": "middle", class: "empty" });
        return;
      }
      drawn += 1;
      const y = sy(Math.max(0, Math.min(max, value)));
      const rect = el("rect", { x: x + 1, y, width: barWidth - 2, height: m.top + h - y, fill: fill(bi), stroke: COLOURS[bi % COLOURS.length], "stroke-width": 1.2 }, svg);
      el("title", {}, rect).textContent = `${bar.name} ${group}: ${percent ? (value * 100).toFixed(2) + " %" : format(value)}`;
    });
    text(svg, m.left + gi * groupWidth + groupWidth / 2, m.top + h + 15, group, { "text-anchor": "middle" });
  });
  figure.dataset.bars = String(drawn);
  el("line", { x1: m.left, x2: m.left + w, y1: m.top + h, y2: m.top + h, class: "axis" }, svg);
  legend(svg, rows, m.top + h + 34, (g, i, x, y) => {
    el("rect", { x, y: y - 6, width: 22, height: 12, fill: fill(i), stroke: COLOURS[i % COLOURS.length] }, g);
  });
  return figure;
}
