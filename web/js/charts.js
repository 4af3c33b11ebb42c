// Charts in SVG and DOM: the logit-lens line chart and the diverging
// layer x head heatmap. Every drawn value carries data-label / data-value
// attributes (the tooltip's source, and what the browser tests read).

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attrs, parent) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (parent) parent.append(el);
  return el;
}

/** A tidy step for about n ticks over span. */
function tickStep(span, n) {
  const raw = span / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw);
}

/** Line chart of values [n] over categorical labels [n], into container. */
export function lineChart(container, labels, values) {
  container.replaceChildren();
  const width = Math.max(container.clientWidth, 320);
  const height = 200;
  const pad = { left: 44, right: 40, top: 8, bottom: 52 };
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "logit difference by layer" }, container);
  let lo = Math.min(0, ...values);
  let hi = Math.max(0, ...values);
  if (hi - lo < 1e-9) hi = lo + 1;
  const x = (i) => pad.left + (labels.length === 1 ? 0.5 : i / (labels.length - 1)) * (width - pad.left - pad.right);
  const y = (v) => pad.top + (1 - (v - lo) / (hi - lo)) * (height - pad.top - pad.bottom);

  const step = tickStep(hi - lo, 5);
  for (let t = Math.ceil(lo / step) * step; t <= hi + 1e-12; t += step) {
    svg("line", { class: "grid", x1: pad.left, x2: width - pad.right, y1: y(t), y2: y(t) }, root);
    svg("text", { x: pad.left - 4, y: y(t) + 3, "text-anchor": "end" }, root).textContent = Number(t.toPrecision(6));
  }
  svg("line", { class: "zero", x1: pad.left, x2: width - pad.right, y1: y(0), y2: y(0) }, root);
  svg("polyline", { class: "line", points: values.map((v, i) => `${x(i)},${y(v)}`).join(" ") }, root);
  const every = Math.ceil(labels.length / 26);
  values.forEach((v, i) => {
    const dot = svg("circle", { class: "point", cx: x(i), cy: y(v), r: 3.5, "data-label": labels[i], "data-value": v }, root);
    svg("title", {}, dot).textContent = `${labels[i]}: ${v.toFixed(4)}`;
    if (i % every === 0) {
      svg("text", { x: x(i), y: height - pad.bottom + 10, transform: `rotate(50 ${x(i)} ${height - pad.bottom + 10})` }, root)
        .textContent = labels[i];
    }
  });
}

/** A diverging colour for v in [-max, max]: blue below zero, red above. */
function diverging(v, max) {
  const a = max > 0 ? Math.min(1, Math.abs(v) / max) : 0;
  return v >= 0 ? `rgba(214, 64, 52, ${a})` : `rgba(45, 105, 214, ${a})`;
}

/**
 * Diverging heatmap of grid [rows][cols] into container (a CSS grid), with
 * row and column labels; each cell's data-label is cellLabel(r, c), and
 * onPick(r, c) runs on click.
 */
export function heatmap(container, grid, rowLabels, colLabels, cellLabel, onPick, cellWidth = 34) {
  container.replaceChildren();
  container.style.gridTemplateColumns = `28px repeat(${colLabels.length}, ${cellWidth}px)`;
  const max = Math.max(...grid.flat().map(Math.abs));
  const cell = (text, cls) => {
    const el = document.createElement("div");
    el.className = cls;
    el.textContent = text;
    container.append(el);
    return el;
  };
  cell("", "label");
  for (const c of colLabels) cell(c, "label col");
  grid.forEach((row, r) => {
    cell(rowLabels[r], "label");
    row.forEach((v, c) => {
      const el = cell("", "cell");
      el.style.background = diverging(v, max);
      el.title = `${cellLabel(r, c)}: ${v.toFixed(4)}`;
      el.dataset.label = cellLabel(r, c);
      el.dataset.value = v;
      el.addEventListener("click", () => onPick(r, c));
    });
  });
}

/** Heatmap of a per-head grid [layers][heads]; onPick(layer, head) on click. */
export function headHeatmap(container, grid, onPick) {
  heatmap(container, grid, grid.map((_, l) => `L${l}`), grid[0].map((_, h) => `H${h}`),
    (l, h) => `L${l}H${h}`, onPick);
}
