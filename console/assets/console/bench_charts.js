// A benchmark's charts (#bench-charts) on its page and on the compare page: the throughput-vs-latency curve and
// TTFT against the load, one uPlot per <figure data-chart>. Runs come from the page (#bench-runs, JSON:
// [{"key", "label", "steps": [{"index", "concurrency" | "rate", figures...}]}]) and, on a run's page, live: job.js
// hands over every "metric" item of the job's stream (one per finished step, backlog and live alike, so a reload
// redraws every point) through window.benchCharts.add, for the run named by the card's data-live. A step seen
// twice keeps its latest figures. A re-run still waiting for its spec version (#bench-waiting) reloads every 15 s
// until its job exists. Each figure says its x (data-x: a figure's key, or "load" for the concurrency
// or rate) and lists its y series as <span data-series="key">label</span> (translated in the template); with
// several runs each series is drawn per run (the run's colour, a dash per figure). data-points on each figure
// says how many x values it draws. A live step also becomes a row of #bench-steps when the page has none for it.
// uPlot is vendored (static vendor/uplot/), so nothing loads from outside the console; charts.js holds the helpers.
(function () {
  "use strict";

  var C = window.consoleCharts, number = C.number, format = C.format;
  var COLORS = ["#0d6efd", "#fd7e14", "#198754", "#6f42c1", "#d63384", "#0aa2c0"];
  var DASHES = [[], [6, 4], [2, 3]];
  var HEIGHT = 240;
  var REDRAW_MS = 100;

  var card = null, charts = null, runs = [], timer = null;

  function load(step) {
    return number(step.concurrency) || number(step.rate);
  }

  function run(key, label) {
    for (var i = 0; i < runs.length; i++) if (runs[i].key === key) return runs[i];
    var made = { key: key, label: label || "#" + key, byStep: {} };
    runs.push(made);
    return made;
  }

  function remember(target, step) {
    var index = number(step.index);
    if (index === null) index = number(step.step);
    if (index === null) return;
    var kept = target.byStep[index] || {};
    Object.keys(step).forEach(function (name) { kept[name] = step[name]; });
    kept.index = index;
    target.byStep[index] = kept;
  }

  function setUp() {
    card = document.getElementById("bench-charts");
    if (!card || !window.uPlot) return false;
    var source = document.getElementById("bench-runs");
    if (source) {
      JSON.parse(source.textContent).forEach(function (given) {
        var target = run(String(given.key), given.label);
        (given.steps || []).forEach(function (step) { remember(target, step); });
      });
    }
    if (card.dataset.live && !runs.length) run(card.dataset.live, "");
    charts = Array.prototype.map.call(card.querySelectorAll("[data-chart]"), function (figure) {
      return { figure: figure, x: figure.dataset.x, plotBox: figure.querySelector("[data-plot]"),
               ys: C.seriesOf(figure), plot: null, shape: "" };
    });
    C.followWidth(card, charts, HEIGHT);
    return true;
  }

  function xOf(chart, step) {
    return chart.x === "load" ? load(step) : number(step[chart.x]);
  }

  // Aligned columns: the x values any run has (sorted), then one column per run and y series (null: no point).
  function columns(chart) {
    var seen = {}, xs = [];
    runs.forEach(function (one) {
      Object.keys(one.byStep).forEach(function (index) {
        var x = xOf(chart, one.byStep[index]);
        if (x !== null && !seen[x]) { seen[x] = true; xs.push(x); }
      });
    });
    xs.sort(function (a, b) { return a - b; });
    var data = [xs];
    runs.forEach(function (one) {
      chart.ys.forEach(function (y) {
        var byX = {};
        Object.keys(one.byStep).forEach(function (index) {
          var step = one.byStep[index], x = xOf(chart, step);
          if (x !== null) byX[x] = number(step[y.key]);
        });
        data.push(xs.map(function (x) { return byX[x] === undefined ? null : byX[x]; }));
      });
    });
    return data;
  }

  function options(chart) {
    var several = runs.length > 1;
    var series = [{ label: chart.figure.dataset.xLabel || "x", value: function (u, v) { return format(v); } }];
    runs.forEach(function (one, r) {
      chart.ys.forEach(function (y, i) {
        var label = several ? one.label + " · " + y.label : y.label;
        var stroke = several ? COLORS[r % COLORS.length] : COLORS[i % COLORS.length];
        var dash = several ? DASHES[i % DASHES.length] : [];
        series.push(C.line(label, stroke, format, { dash: dash, spanGaps: true, points: { show: true, size: 6 } }));
      });
    });
    var logX = chart.figure.dataset.logX === "1";
    return {
      scales: { x: logX ? { time: false, distr: 3, log: 2 } : { time: false } },
      series: series,
      axes: [
        { label: chart.figure.dataset.xLabel || "", values: C.ticks(format) },
        { label: chart.figure.dataset.yLabel || "", size: 64, values: C.ticks(format) },
      ],
    };
  }

  function draw() {
    timer = null;
    charts.forEach(function (chart) {
      var data = columns(chart);
      chart.figure.dataset.points = String(data[0].length);
      if (!data[0].length) return;
      card.hidden = false;  // before the plot is made: it takes its width from the laid-out figure
      chart.figure.hidden = false;
      var shape = runs.map(function (one) { return one.key; }).join(",");
      if (chart.plot && chart.shape === shape) chart.plot.setData(data);
      else {
        if (chart.plot) chart.plot.destroy();
        chart.plot = C.plot(chart.plotBox, HEIGHT, options(chart), data);
        chart.shape = shape;
      }
    });
    var live = card.dataset.live ? run(card.dataset.live, "") : runs[0];
    card.dataset.steps = String(live ? Object.keys(live.byStep).length : 0);
  }

  function cellText(step, key) {
    if (key === "load") {
      if (number(step.concurrency) !== null) return String(step.concurrency);
      return number(step.rate) !== null ? format(step.rate) + "/s" : "—";
    }
    if (key === "errors") {
      var errors = step.errors || {};
      return Object.keys(errors).sort().map(function (name) { return name + ": " + errors[name]; }).join(", ") || "—";
    }
    var value = number(step[key]);
    if (value === null) return step[key] === undefined || step[key] === null ? "—" : String(step[key]);
    return Number.isInteger(value) ? String(value) : value.toFixed(1);
  }

  // A step that finished while the page was open: a row like the server renders (errors flagged).
  function addRow(step) {
    var table = document.getElementById("bench-steps");
    if (!table || number(step.step) === null) return;
    var body = table.querySelector("tbody");
    if (body.querySelector('tr[data-step="' + step.step + '"]')) return;
    var empty = document.getElementById("bench-steps-empty");
    if (empty) empty.remove();
    var failed = Boolean(step.has_errors) || Boolean(number(step.requests_failed));
    var row = document.createElement("tr");
    row.dataset.step = String(step.step);
    row.dataset.hasErrors = failed ? "1" : "0";
    if (failed) row.className = "table-danger";
    table.querySelectorAll("thead th[data-key]").forEach(function (th) {
      var cell = document.createElement("td");
      var key = th.dataset.key;
      cell.textContent = key === "label" ? step.label || String(step.step) : cellText(step, key);
      if (key === "label" && failed) {
        var badge = document.createElement("span");
        badge.className = "badge text-bg-danger ms-1";
        badge.dataset.errorsFlag = "";
        badge.textContent = table.dataset.errorsLabel || "errors";
        cell.appendChild(badge);
      }
      row.appendChild(cell);
    });
    var rows = Array.prototype.slice.call(body.querySelectorAll("tr[data-step]"));
    var after = rows.filter(function (other) { return Number(other.dataset.step) > step.step; })[0];
    body.insertBefore(row, after || null);
  }

  // Items of stream "metric" (job.js): the live run's steps.
  function add(items) {
    if (!charts && !setUp()) return;
    var target = run(card.dataset.live || "live", "");
    items.forEach(function (item) {
      var data = item.data || {};
      if (number(data.step) === null) return;
      remember(target, data);
      addRow(data);
    });
    if (!timer) timer = setTimeout(draw, REDRAW_MS);
  }

  var WAIT_RELOAD_MS = 15000;

  function start() {
    // A re-run waiting for its spec version has no job to stream yet: look again until it starts.
    if (document.getElementById("bench-waiting")) setTimeout(function () { location.reload(); }, WAIT_RELOAD_MS);
    if (!charts && !setUp()) return;
    draw();
  }

  window.benchCharts = { add: add };
  C.onReady(start);
})();
