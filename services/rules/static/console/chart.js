// A small line chart in SVG, no library: series over a row of buckets, an optional
// horizontal limit (a rule's cap), and a focusable point for every value, whose value
// shows on hover or focus. Nothing is styled inline (the console's CSP forbids it):
// shapes get classes from console.css and SVG presentation attributes set here.

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 720;
const HEIGHT = 240;
const MARGIN = { top: 16, right: 16, bottom: 36, left: 56 };

function svg(tag, attributes = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value !== undefined && value !== null) node.setAttribute(name, String(value));
  }
  node.append(...children);
  return node;
}

// A round top for the value axis: 1, 2 or 5 times a power of ten.
function niceMax(value) {
  if (value <= 0) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  const step = [1, 2, 5, 10].find((m) => m * power >= value);
  return step * power;
}

const format = (value) => new Intl.NumberFormat("en-GB").format(value);

// `labels`: one short label per bucket; `series`: [{ name, className, values }] (a
// value may be null: not known); `limit`: { name, value } drawn as a line, or null.
// Returns a <figure> holding the chart, its legend and a live readout of the value
// under the pointer or the focus.
export function lineChart({ title, labels, series, limit = null }) {
  const known = series.flatMap((line) => line.values.filter((value) => value !== null));
  const top = niceMax(Math.max(0, ...known, limit ? limit.value : 0));
  const plotWidth = WIDTH - MARGIN.left - MARGIN.right;
  const plotHeight = HEIGHT - MARGIN.top - MARGIN.bottom;
  const step = labels.length > 1 ? plotWidth / (labels.length - 1) : 0;
  const x = (index) => MARGIN.left + (labels.length > 1 ? index * step : plotWidth / 2);
  const y = (value) => MARGIN.top + plotHeight - (value / top) * plotHeight;

  const readout = document.createElement("p");
  readout.className = "chart-readout";
  readout.setAttribute("aria-live", "polite");
  readout.textContent = "Point at or tab to a value to read it.";
  const chart = svg("svg", {
    viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
    class: "chart",
    role: "group",
    "aria-label": title,
  });

  // The value axis: four grid lines with their values.
  for (let tick = 0; tick <= 4; tick += 1) {
    const value = (top * tick) / 4;
    chart.append(
      svg("line", { x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: y(value), y2: y(value), class: "chart-grid" }),
      svg("text", { x: MARGIN.left - 8, y: y(value) + 4, "text-anchor": "end", class: "chart-axis" }, format(value)),
    );
  }
  // The bucket axis: at most eight labels, evenly spread.
  const every = Math.max(1, Math.ceil(labels.length / 8));
  labels.forEach((label, index) => {
    if (index % every !== 0) return;
    chart.append(
      svg("text", { x: x(index), y: HEIGHT - MARGIN.bottom + 18, "text-anchor": "middle", class: "chart-axis" }, label),
    );
  });

  if (limit) {
    chart.append(
      svg("line", { x1: MARGIN.left, x2: WIDTH - MARGIN.right, y1: y(limit.value), y2: y(limit.value), class: "chart-limit" }),
      svg("text", { x: WIDTH - MARGIN.right, y: y(limit.value) - 6, "text-anchor": "end", class: "chart-limit-label" }, `${limit.name}: ${format(limit.value)}`),
    );
  }

  const show = (text) => {
    readout.textContent = text;
  };
  for (const line of series) {
    const points = line.values
      .map((value, index) => (value === null ? null : `${x(index)},${y(value)}`))
      .filter(Boolean)
      .join(" ");
    const group = svg("g", { class: `chart-series ${line.className}` });
    if (points) group.append(svg("polyline", { points, fill: "none", class: "chart-line" }));
    line.values.forEach((value, index) => {
      if (value === null) return;
      const text = `${labels[index]} · ${line.name}: ${format(value)}`;
      const point = svg(
        "circle",
        { cx: x(index), cy: y(value), r: 4, tabindex: 0, role: "img", "aria-label": text, class: "chart-point" },
        svg("title", {}, text),
      );
      for (const name of ["mouseenter", "focus"]) point.addEventListener(name, () => show(text));
      group.append(point);
    });
    chart.append(group);
  }

  const legend = document.createElement("ul");
  legend.className = "chart-legend";
  for (const line of [...series, ...(limit ? [{ name: limit.name, className: "limit" }] : [])]) {
    const item = document.createElement("li");
    const swatch = svg("svg", { width: 14, height: 14, "aria-hidden": "true", class: `chart-series ${line.className}` });
    swatch.append(svg("rect", { x: 0, y: 5, width: 14, height: 4, class: "chart-swatch" }));
    item.append(swatch, ` ${line.name}`);
    legend.append(item);
  }

  const figure = document.createElement("figure");
  figure.className = "chart-figure";
  const caption = document.createElement("figcaption");
  caption.textContent = title;
  figure.append(caption, chart, legend, readout);
  return figure;
}
