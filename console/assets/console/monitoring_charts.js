// The fleet's charts (fleet dashboard, a host's GPUs, a deployment's serving figures): each [data-monitoring-charts]
// box fetches its series from data-url (?window=1h|24h|7d|30d; deployments/monitoring/charts.py says the shape) and
// draws one uPlot per <figure data-chart="key"> the template lists (captions translated there; series labels come
// translated in the JSON). Window buttons ([data-window-choice]) redraw from the same endpoint. After each draw the
// box says what it drew: data-state ready|error, data-points (values drawn), data-source (console|prometheus).
// uPlot is vendored (static vendor/uplot/); charts.js holds the shared helpers.
(function () {
  "use strict";

  if (window.monitoringChartsLoaded) return;
  window.monitoringChartsLoaded = true;

  var C = window.consoleCharts;
  var COLORS = ["#0d6efd", "#fd7e14", "#198754", "#dc3545", "#6f42c1", "#20c997", "#d63384", "#6c757d"];
  var HEIGHT = 180;

  // Every figure here counts up from zero (a load, a memory, a queue); percentages run to 100.
  function yRange(unit) {
    return function (u, min, max) {
      var top = unit === "%" ? 100 : (max > 0 ? max * 1.1 : 1);
      return [0, Math.max(top, max || 0)];
    };
  }

  function setup(box) {
    var state = { charts: [] };
    box.querySelectorAll("[data-window-choice]").forEach(function (button) {
      button.addEventListener("click", function () { load(box, state, button.dataset.windowChoice); });
    });
    C.followWidth(box, state.charts, HEIGHT);
    load(box, state, box.dataset.window || "24h");
  }

  function load(box, state, windowKey) {
    box.dataset.state = "loading";
    box.querySelectorAll("[data-window-choice]").forEach(function (button) {
      var chosen = button.dataset.windowChoice === windowKey;
      button.classList.toggle("active", chosen);
      button.setAttribute("aria-pressed", chosen ? "true" : "false");
    });
    var url = box.dataset.url + (box.dataset.url.indexOf("?") < 0 ? "?" : "&") + "window=" + encodeURIComponent(windowKey);
    fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(function (figure) { draw(box, state, figure); })
      .catch(function (error) {
        box.dataset.state = "error";
        var failed = box.querySelector("[data-failed]");
        if (failed) { failed.hidden = false; failed.title = String(error); }
      });
  }

  function draw(box, state, figure) {
    state.charts.forEach(function (chart) { if (chart.plot) chart.plot.destroy(); });
    state.charts.length = 0;
    var byKey = {};
    figure.charts.forEach(function (chart) { byKey[chart.key] = chart; });
    box.querySelectorAll("figure[data-chart]").forEach(function (element) {
      var chart = byKey[element.dataset.chart];
      var plotBox = element.querySelector("[data-plot]");
      plotBox.textContent = "";
      if (!chart) return;
      var time = box.querySelector("[data-time-label]");  // uPlot's own x label is English "Time"
      var series = [time ? { label: time.dataset.timeLabel } : {}], data = [figure.x], points = 0;
      chart.series.forEach(function (one, i) {
        series.push(C.line(one.label, COLORS[i % COLORS.length], C.format, { spanGaps: false }));
        data.push(one.values.map(C.number));
        one.values.forEach(function (value) { if (C.number(value) !== null) points += 1; });
      });
      var options = {
        series: series,
        scales: { x: { time: true, min: figure.start, max: figure.end }, y: { range: yRange(chart.unit) } },
        axes: [{}, { size: 60, values: C.ticks(C.format), label: chart.unit, labelSize: 16 }],
      };
      element.dataset.points = String(points);
      state.charts.push({ plot: C.plot(plotBox, HEIGHT, options, data), plotBox: plotBox });
    });
    var source = box.querySelector("[data-source]");
    if (source) source.textContent = figure.source_label;
    var note = box.querySelector("[data-note]");
    if (note) { note.textContent = figure.note || ""; note.hidden = !figure.note; }
    var empty = box.querySelector("[data-empty]");
    if (empty) empty.hidden = figure.points > 0;
    var failed = box.querySelector("[data-failed]");
    if (failed) failed.hidden = true;
    box.dataset.points = String(figure.points);
    box.dataset.source = figure.source;
    box.dataset.window = figure.window;
    box.dataset.state = "ready";
  }

  C.onReady(function () {
    document.querySelectorAll("[data-monitoring-charts]").forEach(setup);
  });
})();
