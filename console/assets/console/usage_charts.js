// The Usage page's charts (#usage-charts): one uPlot per <figure data-chart>, drawn from the per-day series the
// page embeds (#usage-series, [{"day": "YYYY-MM-DD", "requests": N, ...}]). Each figure lists its series as
// <span data-series="key">label</span> (labels are translated in the template); x is the day (UTC midnight).
// uPlot is vendored (static vendor/uplot/), so nothing loads from outside the console.
(function () {
  "use strict";

  var COLORS = ["#0d6efd", "#fd7e14", "#dc3545", "#6f42c1"];
  var HEIGHT = 200;

  function format(value) {
    if (value === null || value === undefined) return "—";
    var size = Math.abs(value);
    if (size >= 1e6) return (value / 1e6).toPrecision(3) + "M";
    if (size >= 1e4) return (value / 1e3).toPrecision(3) + "k";
    return String(Number(value.toPrecision(4)));
  }

  function draw() {
    var card = document.getElementById("usage-charts");
    var source = document.getElementById("usage-series");
    if (!card || !source || !window.uPlot) return;
    var days = JSON.parse(source.textContent);
    var xs = days.map(function (row) { return Date.parse(row.day + "T00:00:00Z") / 1000; });
    var charts = Array.prototype.map.call(card.querySelectorAll("[data-chart]"), function (figure, index) {
      var plotBox = figure.querySelector("[data-plot]");
      var series = [{}], data = [xs];
      figure.querySelectorAll("[data-series]").forEach(function (span, i) {
        var key = span.dataset.series;
        series.push({
          label: span.textContent.trim(),
          stroke: COLORS[(index + i) % COLORS.length],
          width: 1.5,
          spanGaps: false,  // a day without calls has no latency: leave the gap
          value: function (u, v) { return format(v); },
        });
        data.push(days.map(function (row) { return row[key] === undefined ? null : row[key]; }));
      });
      var options = {
        width: plotBox.clientWidth || 400,
        height: HEIGHT,
        tzDate: function (ts) { return uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"); },
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
