// A job's output, live, on the model and job pages: /ws/jobs/<id>/ (see console/streams.py for the protocol).
// The page starts empty and subscribes after seq 0, so the backlog fills it and a reload loses nothing.
// Items are dropped when their seq was already shown; a reconnect (with backoff) resumes after the last seq.
// "progress" items drive the progress bar (bytes for downloads; "step X of Y" when they carry a step);
// "metric" items go to the training curves (job_curves.js) or a benchmark's charts (bench_charts.js), never to
// the log; "log" and "event" items become lines (always as textContent), a checkpoint event as a readable sentence.
// When a job that was active at page load ends, the page reloads once to show the final state.
(function () {
  "use strict";

  var UNITS = ["bytes", "KB", "MB", "GB", "TB", "PB"];

  // Like Django's filesizeformat (1024-based), so live numbers match the server-rendered ones.
  function size(bytes) {
    var value = Number(bytes) || 0, unit = 0;
    while (value >= 1024 && unit < UNITS.length - 1) { value /= 1024; unit++; }
    return unit === 0 ? value + " " + UNITS[0] : value.toFixed(1) + " " + UNITS[unit];
  }

  // Like deployments.registry.views.duration.
  function duration(seconds) {
    if (seconds === null || seconds === undefined || seconds === "") return "—";
    var s = Math.max(0, Math.floor(Number(seconds) || 0));
    var pad = function (n) { return n < 10 ? "0" + n : String(n); };
    if (s >= 3600) return Math.floor(s / 3600) + " h " + pad(Math.floor((s % 3600) / 60)) + " min";
    if (s >= 60) return Math.floor(s / 60) + " min " + pad(s % 60) + " s";
    return s + " s";
  }

  function clock(iso) {
    var date = new Date(iso);
    return isNaN(date.getTime()) ? "" : date.toISOString().slice(11, 19);
  }

  function isEnd(item) {
    if (item.stream !== "log" || typeof item.text !== "string") return false;
    return item.text === "succeeded" || item.text === "cancelled" || item.text.indexOf("failed") === 0;
  }

  function start() {
    var box = document.getElementById("job-live");
    if (!box || !window.WebSocket) return;
    var log = document.getElementById("job-log");
    var progress = document.getElementById("job-progress");
    var state = document.getElementById("job-stream-state");
    var jobId = box.dataset.job;
    var active = box.dataset.active === "1";
    var lastSeq = parseInt(box.dataset.after, 10) || 0;
    var ended = false;

    function setState(name) {
      box.dataset.stream = name;
      if (state) state.textContent = state.dataset[name] || "";
    }

    function field(name) { return progress.querySelector('[data-progress="' + name + '"]'); }

    function setText(name, text) {
      var element = field(name);
      if (element) element.textContent = text;
    }

    // Fill "{name}" placeholders of a translated sentence the template hands over in a data attribute.
    function fill(template, values) {
      return template.replace(/\{(\w+)\}/g, function (all, name) {
        return Object.prototype.hasOwnProperty.call(values, name) ? values[name] : all;
      });
    }

    function showKind(steps) {
      progress.querySelectorAll("[data-progress-kind]").forEach(function (element) {
        element.hidden = (element.dataset.progressKind === "steps") !== steps;
      });
    }

    // Training: "step X of Y", and the time left the job reported, else the measured mean step time.
    function showSteps(data, total, running) {
      var step = Math.max(0, Number(data.step) || 0);
      var eta = typeof data.eta_seconds === "number" ? data.eta_seconds : null;
      var perStep = window.jobCurves ? window.jobCurves.stepTime() : null;
      if (eta === null && perStep !== null) eta = Math.max(0, total - step) * perStep;
      var text = fill(progress.dataset.stepText || "step {step} of {total}", { step: step, total: total });
      if (field("step")) setText("step", text);
      else { setText("done", String(step)); setText("total", String(total)); }  // a page without a step field
      setText("eta", running && eta !== null ? duration(eta) : "—");
      return total ? Math.min(100, Math.floor((100 * step) / total)) : 0;
    }

    function showBytes(data, total, running) {
      var done = Number(data.done) || 0;
      setText("done", size(done));
      setText("total", size(total));
      // Rate and time left mean something only while the job runs.
      setText("rate", running && data.rate_bps ? size(data.rate_bps) + "/s" : "—");
      setText("eta", running && data.eta_s ? duration(data.eta_s) : "—");
      var file = data.file || "—";
      if (data.file && data.file_total) file += " (" + size(data.file_done) + " / " + size(data.file_total) + ")";
      setText("file", file);
      return total ? Math.min(100, Math.floor((100 * done) / total)) : 0;
    }

    function showProgress(data) {
      if (!data || !progress) return;
      var total = Number(data.total) || 0, running = active && !ended;
      var steps = typeof data.step === "number";
      if (steps && total <= 0) return;  // a step without a total says nothing of how far it got
      progress.hidden = false;
      showKind(steps);
      var pct = steps ? showSteps(data, total, running) : showBytes(data, total, running);
      var bar = field("bar");
      bar.style.width = pct + "%";
      bar.textContent = total ? pct + "%" : "";
      bar.parentNode.setAttribute("aria-valuenow", String(pct));
    }

    function lineText(item) {
      var data = item.data || {};
      if (item.stream === "event" && item.text === "checkpoint" && typeof data.step === "number") {
        var text = fill(log.dataset.checkpoint || "checkpoint at step {step}", { step: data.step });
        if (typeof data.path === "string" && data.path) text += ": " + data.path;
        return text;
      }
      var body = item.text || "";
      if (item.stream === "event" && item.data) body += " " + JSON.stringify(item.data);
      return body;
    }

    function addLine(item) {
      var empty = document.getElementById("job-log-empty");
      if (empty) empty.remove();
      var line = document.createElement("div");
      line.className = "job-line" + (item.stream === "event" ? " text-primary" : "");
      line.dataset.seq = item.seq;
      line.dataset.stream = item.stream;
      var time = document.createElement("span");
      time.className = "text-secondary me-2";
      time.textContent = clock(item.time);
      var text = document.createElement("span");
      text.style.whiteSpace = "pre-wrap";
      text.textContent = lineText(item);
      line.appendChild(time);
      line.appendChild(text);
      var atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
      log.appendChild(line);
      if (atBottom) log.scrollTop = log.scrollHeight;
    }

    function receive(fresh, seq) {
      var latest = null, metrics = [];
      fresh.forEach(function (item) {
        if (item.stream === "progress") latest = item.data;
        else if (item.stream === "metric") metrics.push(item);
        else addLine(item);
        if (isEnd(item)) ended = true;
      });
      lastSeq = seq;
      box.dataset.after = String(lastSeq);
      // A benchmark's page draws its steps (bench_charts.js); a training job's, its curves (job_curves.js).
      var charts = window.benchCharts || window.jobCurves;
      if (metrics.length && charts) charts.add(metrics);
      if (latest) showProgress(latest);
      if (ended && active) reloadOnce();
    }

    function reloadOnce() {
      // The outcome is written just after the last line: give it a moment, and never loop.
      var key = "job-reloaded-" + jobId;
      if (window.sessionStorage && sessionStorage.getItem(key)) return;
      if (window.sessionStorage) sessionStorage.setItem(key, "1");
      active = false;
      setTimeout(function () { location.reload(); }, 1500);
    }

    window.consoleStream(box.dataset.ws, { after: lastSeq, onItems: receive, onState: setState });
  }

  document.addEventListener("DOMContentLoaded", start);
})();
