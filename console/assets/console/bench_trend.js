// The deployment page's benchmark trend (#bench-trend): one uPlot per <figure data-chart>, drawn from the points the
// page embeds (#bench-trend-data, oldest first: {"run", "finished_at", "spec_version", "output_tokens_per_s",
// "ttft_ms_p99", "e2e_ms_p99", "has_errors", "scheduled"}, each a run's heaviest step). Each figure lists its series
// as <span data-series="key">label</span> (labels are translated in the template); x is when the run finished. The
// legend names the run and its spec version, with ⚠ for a step that had failed requests. uPlot is vendored;
// charts.js holds the helpers.
(function () {
  "use strict";

  var C = window.consoleCharts;
  var COLORS = ["#0d6efd", "#fd7e14", "#6f42c1"];
  var HEIGHT = 180;

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
      C.seriesOf(figure).forEach(function (one, i) {
        series.push(C.line(one.label, COLORS[(index + i) % COLORS.length], C.format,
                           { spanGaps: true, points: { show: true, size: 6 } }));
        data.push(points.map(function (point) { return C.number(point[one.key]); }));
      });
      var options = { series: series, axes: [{}, { size: 60, values: C.ticks(C.format) }] };
      figure.dataset.points = String(xs.length);
      return { plot: C.plot(plotBox, HEIGHT, options, data), plotBox: plotBox };
    });
    C.followWidth(card, charts, HEIGHT);
  }

  C.onReady(draw);
})();
