// The deployment page's benchmark trend (#bench-trend): one uPlot per <figure data-chart>, drawn from the points the
// page embeds (#bench-trend-data, oldest first: {"run", "finished_at", "spec_version", "output_tokens_per_s",
// "ttft_ms_p99", "e2e_ms_p99", "has_errors", "scheduled"}, each a run's heaviest step). Each figure lists its series
// as <span data-series="key">label</span> (labels are translated in the template); x is when the run finished. The
// legend names the run and its spec version, with ⚠ for a step that had failed requests. uPlot is vendored.
(function () {
  "use strict";

  var COLORS = ["#0d6efd", "#fd7e14", "#6f42c1"];
  var HEIGHT = 180;

  function format(value) {
    if (value === null || value === undefined) return "—";
    var size = Math.abs(value);
    if (size >= 1e6) return (value / 1e6).toPrecision(3) + "M";
    if (size >= 1e4) return (value / 1e3).toPrecision(3) + "k";
    return String(Number(value.toPrecision(4)));
  }

  function number(value) {
    return typeof value === "number" && isFinite(value) ? value : null;
  }

  function draw() {
    var card = document.getElementById("bench-trend");
    var source = document.getElementById("bench-trend-data");
    if (!card || !source || !window.uPlot) return;
    var points = JSON.parse(source.textContent);
    var xs = points.map(function (point) { return Date.parse(point.finished_at) / 1000; });
    var byX = {};
    points.forEach(function (point, i) { byX[xs[i]] = point; });
    function runLabel(u, x) {
      var point = byX[x];
      if (!point) return "—";
      var text = "#" + point.run + (point.spec_version ? " · v" + point.spec_version : "");
      return point.has_errors ? text + " ⚠" : text;
    }
    var charts = Array.prototype.map.call(card.querySelectorAll("[data-chart]"), function (figure, index) {
      var plotBox = figure.querySelector("[data-plot]");
      var series = [{ label: card.dataset.timeLabel || "finished", value: runLabel }], data = [xs];
      figure.querySelectorAll("[data-series]").forEach(function (span, i) {
        var key = span.dataset.series;
        series.push({
          label: span.textContent.trim(),
          stroke: COLORS[(index + i) % COLORS.length],
          width: 1.5,
          spanGaps: true,
          points: { show: true, size: 6 },
          value: function (u, v) { return format(v); },
        });
        data.push(points.map(function (point) { return number(point[key]); }));
      });
      var options = {
        width: plotBox.clientWidth || 400,
        height: HEIGHT,
        series: series,
        axes: [{}, { size: 60, values: function (u, splits) { return splits.map(format); } }],
      };
      figure.dataset.points = String(xs.length);
      return { plot: new window.uPlot(options, data, plotBox), box: plotBox };
    });
    if (window.ResizeObserver) {
      new ResizeObserver(function () {
        charts.forEach(function (chart) { chart.plot.setSize({ width: chart.box.clientWidth, height: HEIGHT }); });
      }).observe(card);
    }
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", draw);
  else draw();
})();
