// The Usage page's charts (#usage-charts): one uPlot per <figure data-chart>, drawn from the per-day series the
// page embeds (#usage-series, [{"day": "YYYY-MM-DD", "requests": N, ...}]). Each figure lists its series as
// <span data-series="key">label</span> (labels are translated in the template); x is the day (UTC midnight).
// uPlot is vendored (static vendor/uplot/), so nothing loads from outside the console; charts.js holds the helpers.
(function () {
  "use strict";

  var C = window.consoleCharts;
  var COLORS = ["#0d6efd", "#fd7e14", "#dc3545", "#6f42c1"];
  var HEIGHT = 200;

  function draw() {
    var card = document.getElementById("usage-charts");
    var source = document.getElementById("usage-series");
    if (!card || !source || !window.uPlot) return;
    var days = JSON.parse(source.textContent);
    var xs = days.map(function (row) { return Date.parse(row.day + "T00:00:00Z") / 1000; });
    var charts = Array.prototype.map.call(card.querySelectorAll("[data-chart]"), function (figure, index) {
      var plotBox = figure.querySelector("[data-plot]");
      var series = [{}], data = [xs];
      C.seriesOf(figure).forEach(function (one, i) {
        // a day without calls has no latency: leave the gap
        series.push(C.line(one.label, COLORS[(index + i) % COLORS.length], C.format, { spanGaps: false }));
        data.push(days.map(function (row) { return row[one.key] === undefined ? null : row[one.key]; }));
      });
      var options = {
        tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"); },
        series: series,
        axes: [{}, { size: 60, values: C.ticks(C.format) }],
      };
      figure.dataset.points = String(xs.length);
      return { plot: C.plot(plotBox, HEIGHT, options, data), plotBox: plotBox };
    });
    C.followWidth(card, charts, HEIGHT);
  }

  C.onReady(draw);
})();
