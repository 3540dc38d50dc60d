// What the console's uPlot charts share (usage_charts.js, job_curves.js, bench_charts.js, bench_trend.js): reading
// numbers, short value labels, a line series, a plot as wide as its box that follows the card's width. Each page
// loads it after uPlot (vendored: static vendor/uplot/) and before its chart script; each chart keeps its own colours.
(function () {
  "use strict";

  // A finite number, or null for anything else (missing, text, NaN).
  function number(value) {
    return typeof value === "number" && isFinite(value) ? value : null;
  }

  // Short labels for counts, rates and milliseconds: 12345 → "12.3k", 1234567 → "1.23M"; no value → "—".
  function format(value) {
    if (value === null || value === undefined) return "—";
    var size = Math.abs(value);
    if (size >= 1e6) return (value / 1e6).toPrecision(3) + "M";
    if (size >= 1e4) return (value / 1e3).toPrecision(3) + "k";
    return String(Number(value.toPrecision(4)));
  }

  // An axis's tick labels, each through formatter.
  function ticks(formatter) {
    return function (u, splits) { return splits.map(formatter); };
  }

  // A y series: a 1.5 px line whose legend shows its value through formatter; extra adds uPlot series options.
  function line(label, stroke, formatter, extra) {
    var series = { label: label, stroke: stroke, width: 1.5, value: function (u, v) { return formatter(v); } };
    Object.keys(extra || {}).forEach(function (name) { series[name] = extra[name]; });
    return series;
  }

  // A figure's y series as its template lists them: <span data-series="key">label</span> (labels translated there).
  function seriesOf(figure) {
    return Array.prototype.map.call(figure.querySelectorAll("[data-series]"), function (span) {
      return { key: span.dataset.series, label: span.textContent.trim() };
    });
  }

  // A uPlot in plotBox, as wide as the box is laid out (400 px while it is not) and height px high.
  function plot(plotBox, height, options, data) {
    options.width = plotBox.clientWidth || 400;
    options.height = height;
    return new window.uPlot(options, data, plotBox);
  }

  // Keeps each chart ({plot, plotBox}; a plot not made yet is null) as wide as its box when the card's width changes.
  function followWidth(card, charts, height) {
    if (!window.ResizeObserver) return;
    new ResizeObserver(function () {
      charts.forEach(function (chart) {
        if (chart.plot) chart.plot.setSize({ width: chart.plotBox.clientWidth, height: height });
      });
    }).observe(card);
  }

  function onReady(start) {
    if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
    else start();
  }

  window.consoleCharts = {
    number: number, format: format, ticks: ticks, line: line, seriesOf: seriesOf, plot: plot,
    followWidth: followWidth, onReady: onReady,
  };
})();
