// A training job's curves on its page (#job-curves): job.js hands over every "metric" item of the job's stream
// ({"step": N, "loss": ..., "eval_loss": ..., ...}), backlog and live alike, so a reload redraws every point.
// Each <figure data-chart> lists its series as <span data-series="key">label</span> (labels are translated in
// the template) and shows once it has a point; x is the step. A step reported twice keeps its latest values.
// data-points on each figure (and on the card: all steps) says how many steps it draws. uPlot is vendored
// (static vendor/uplot/), so nothing loads from outside the console; charts.js holds the helpers.
(function () {
  "use strict";

  var C = window.consoleCharts, number = C.number;
  var COLORS = ["#0d6efd", "#fd7e14", "#6f42c1", "#d63384", "#198754", "#0aa2c0"];
  var HEIGHT = 220;
  var REDRAW_MS = 100;  // batches arriving together (the backlog's pages) are drawn once

  var byStep = {}, steps = [], sorted = true, charts = null, card = null, timer = null, recentStepTimes = [];

  // Short labels for values from 1e-6 (learning rates) to 1e5 (tokens per second): its own, as charts.js's format
  // (for counts) writes no exponents.
  function format(value) {
    if (value === null || value === undefined) return "—";
    var size = Math.abs(value);
    if (size !== 0 && (size < 1e-3 || size >= 1e6)) return value.toExponential(1);
    return String(Number(value.toPrecision(4)));
  }

  function setUp() {
    card = document.getElementById("job-curves");
    if (!card || !window.uPlot) return false;
    charts = Array.prototype.map.call(card.querySelectorAll("[data-chart]"), function (figure) {
      return { figure: figure, plotBox: figure.querySelector("[data-plot]"), series: C.seriesOf(figure), plot: null };
    });
    C.followWidth(card, charts, HEIGHT);
    return true;
  }

  function options(chart, offset) {
    var series = [{ label: card.dataset.stepLabel || "step", value: function (u, v) { return v === null ? "—" : v; } }];
    chart.series.forEach(function (one, i) {
      // eval loss comes every few hundred steps: join its points
      series.push(C.line(one.label, COLORS[(offset + i) % COLORS.length], format,
                         { spanGaps: true, points: { show: i > 0 } }));
    });
    return {
      scales: { x: { time: false } },
      series: series,
      axes: [{ label: card.dataset.stepLabel || "step" }, { size: 64, values: C.ticks(format) }],
    };
  }

  // The chart's columns: the steps where any of its series has a value, and one column per series.
  function columns(chart) {
    var xs = [], ys = chart.series.map(function () { return []; });
    steps.forEach(function (step) {
      var values = byStep[step], row = chart.series.map(function (one) { return number(values[one.key]); });
      if (row.every(function (v) { return v === null; })) return;
      xs.push(step);
      row.forEach(function (v, i) { ys[i].push(v); });
    });
    return [xs].concat(ys);
  }

  function draw() {
    timer = null;
    if (!sorted) { steps.sort(function (a, b) { return a - b; }); sorted = true; }
    card.dataset.points = String(steps.length);
    var offset = 0;
    charts.forEach(function (chart) {
      var data = columns(chart);
      chart.figure.dataset.points = String(data[0].length);
      if (data[0].length) {
        card.hidden = false;  // before the plot is made: it takes its width from the laid-out figure
        chart.figure.hidden = false;
        if (chart.plot) chart.plot.setData(data);
        else chart.plot = C.plot(chart.plotBox, HEIGHT, options(chart, offset), data);
      }
      offset += chart.series.length;
    });
  }

  // Items of stream "metric": remember their values by step, draw soon.
  function add(items) {
    if (!charts && !setUp()) return;
    items.forEach(function (item) {
      var data = item.data || {}, step = number(data.step);
      if (step === null) return;
      if (!byStep[step]) {
        if (steps.length && step < steps[steps.length - 1]) sorted = false;
        steps.push(step);
        byStep[step] = {};
      }
      Object.keys(data).forEach(function (key) {
        if (key !== "step" && number(data[key]) !== null) byStep[step][key] = data[key];
      });
      var seconds = number(data.step_time);
      if (seconds !== null) recentStepTimes = recentStepTimes.slice(-19).concat([seconds]);
    });
    if (!timer) timer = setTimeout(draw, REDRAW_MS);
  }

  // Mean of the last 20 measured step times (null before any), for a time left the job did not report.
  function stepTime() {
    if (!recentStepTimes.length) return null;
    return recentStepTimes.reduce(function (a, b) { return a + b; }, 0) / recentStepTimes.length;
  }

  window.jobCurves = { add: add, stepTime: stepTime };
})();
