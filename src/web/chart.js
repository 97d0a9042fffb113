// A line chart on a canvas: a few series, the latest points, an axis that
// follows the data. Enough for the demo's latency meter and the admin's
// rates, with no library to download.

export class LineChart {
  constructor(canvas, series, { points = 120, unit = "" } = {}) {
    this.canvas = canvas;
    this.series = series.map((s) => ({ ...s, values: [] }));
    this.points = points;
    this.unit = unit;
  }

  push(index, value) {
    const values = this.series[index].values;
    values.push(value);
    if (values.length > this.points) values.shift();
  }

  draw() {
    const c = this.canvas;
    const ratio = window.devicePixelRatio || 1;
    const width = c.clientWidth;
    const height = c.clientHeight;
    c.width = width * ratio;
    c.height = height * ratio;
    const g = c.getContext("2d");
    g.scale(ratio, ratio);
    g.clearRect(0, 0, width, height);
    const all = this.series.flatMap((s) => s.values);
    const top = niceCeiling(Math.max(1, ...all));
    const left = 44;
    const plotWidth = width - left - 8;
    const plotHeight = height - 24;
    g.font = "11px system-ui, sans-serif";
    g.fillStyle = "#6b7785";
    g.strokeStyle = "#e3e8ee";
    for (let i = 0; i <= 4; i++) {
      const y = 8 + (plotHeight * i) / 4;
      g.beginPath();
      g.moveTo(left, y);
      g.lineTo(width - 8, y);
      g.stroke();
      g.fillText(`${formatNumber(top - (top * i) / 4)}${this.unit}`, 2, y + 4);
    }
    this.series.forEach((s, k) => {
      g.strokeStyle = s.color;
      g.lineWidth = 2;
      g.beginPath();
      s.values.forEach((v, i) => {
        const x = left + (plotWidth * i) / Math.max(1, this.points - 1);
        const y = 8 + plotHeight - (plotHeight * Math.min(v, top)) / top;
        i ? g.lineTo(x, y) : g.moveTo(x, y);
      });
      g.stroke();
      g.fillStyle = s.color;
      g.fillText(s.label, left + 8 + k * 110, height - 6);
    });
  }
}

function niceCeiling(v) {
  const magnitude = 10 ** Math.floor(Math.log10(v));
  for (const step of [1, 2, 2.5, 5, 10]) if (v <= step * magnitude) return step * magnitude;
  return 10 * magnitude;
}

function formatNumber(v) {
  return v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2);
}

// The q-quantile (0..1) of a list of numbers.
export function quantile(values, q) {
  if (!values.length) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}
