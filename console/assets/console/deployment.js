// A deployment's page, live. The current job's output comes from /ws/jobs/<id>/ through consoleStream
// (console.js): lines of the launch job itself (streams "log" and "event") go to the launch log, the model
// server's output (stream "server") to the server log, each pane numbering its own lines. The stream sends the
// backlog first, so a reload loses nothing. The job's badge follows the status the same stream sends (the moment
// the job is claimed or ends) and the poll. The state is polled from the API every 2 s: the badge, the facts, the
// failure box, the job's badge and which actions are offered follow it; a new job (a restart) reloads the page for
// its logs.
(function () {
  "use strict";

  var POLL_MS = 2000;
  var ENDED = ["succeeded", "failed", "cancelled"];

  function utc(iso) {
    if (!iso) return "—";
    var date = new Date(iso);
    return isNaN(date.getTime()) ? iso : date.toISOString().slice(0, 19).replace("T", " ");
  }

  function clock(iso) {
    var date = new Date(iso);
    return isNaN(date.getTime()) ? "" : date.toISOString().slice(11, 19);
  }

  // The job badge (templates/registry/_job_status.html) in a status's look, from the table the view gives.
  function showJobStatus(status) {
    var badge = document.querySelector("#deployment [data-job-status]");
    var looks = JSON.parse((document.getElementById("job-states") || {}).textContent || "{}");
    if (!badge || !status || !looks[status] || badge.dataset.jobStatus === status) return;
    // A job never leaves its outcome: a poll answered before the stream's news must not undo it.
    if (ENDED.indexOf(badge.dataset.jobStatus) >= 0 && ENDED.indexOf(status) < 0) return;
    badge.className = "badge " + looks[status].css;
    badge.dataset.jobStatus = status;
    badge.textContent = looks[status].label;
  }

  function shownJobStatus() {
    var badge = document.querySelector("#deployment [data-job-status]");
    return badge ? badge.dataset.jobStatus : "";
  }

  function logs() {
    var box = document.getElementById("logs");
    if (!box || !window.WebSocket || !window.consoleStream) return;
    var state = document.getElementById("log-stream-state");
    var panes = Array.prototype.slice.call(box.querySelectorAll(".log-pane"));
    var counts = new Map();

    function paneFor(stream) {
      for (var i = 0; i < panes.length; i++) {
        if (panes[i].dataset.streams.split(" ").indexOf(stream) >= 0) return panes[i];
      }
      return null;
    }

    function addLine(pane, item) {
      var empty = pane.querySelector("[data-empty]");
      if (empty) empty.remove();
      var number = (counts.get(pane) || 0) + 1;
      counts.set(pane, number);
      var line = document.createElement("div");
      line.className = "log-line d-flex" + (item.stream === "event" ? " text-primary" : "");
      line.dataset.seq = item.seq;
      line.dataset.stream = item.stream;
      line.dataset.line = String(number);
      var num = document.createElement("span");
      num.className = "text-secondary text-end me-2 user-select-none flex-shrink-0";
      num.style.minWidth = "3em";
      num.textContent = String(number);
      var time = document.createElement("span");
      time.className = "text-secondary me-2 flex-shrink-0";
      time.textContent = clock(item.time);
      var text = document.createElement("span");
      text.style.whiteSpace = "pre-wrap";
      text.style.wordBreak = "break-word";
      var body = item.text || "";
      if (item.stream === "event" && item.data) body += " " + JSON.stringify(item.data);
      text.textContent = body;
      line.appendChild(num);
      line.appendChild(time);
      line.appendChild(text);
      var atBottom = pane.scrollTop + pane.clientHeight >= pane.scrollHeight - 4;
      pane.appendChild(line);
      if (atBottom) pane.scrollTop = pane.scrollHeight;
    }

    window.consoleStream(box.dataset.ws, {
      after: 0,
      onItems: function (items) {
        items.forEach(function (item) {
          var pane = paneFor(item.stream);
          if (pane) addLine(pane, item);
        });
      },
      onState: function (name) {
        box.dataset.stream = name;
        if (state) state.textContent = state.dataset[name] || "";
      },
      status: shownJobStatus,
      onStatus: showJobStatus
    });
  }

  function poll() {
    var root = document.getElementById("deployment");
    if (!root || !window.fetch) return;
    var states = JSON.parse(document.getElementById("deployment-states").textContent || "{}");

    function set(name, value) {
      root.querySelectorAll('[data-poll="' + name + '"]').forEach(function (el) {
        el.textContent = value === null || value === undefined || value === "" ? "—" : String(value);
      });
    }

    function apply(data) {
      var look = states[data.state] || { label: data.state, css: "text-bg-secondary" };
      var badge = document.querySelector("#state-badge .badge");
      if (badge) {
        badge.className = "badge " + look.css;
        badge.dataset.state = data.state;
        badge.textContent = look.label;
      }
      var since = document.getElementById("state-since");
      if (since) {
        since.textContent = utc(data.state_changed_at);
        since.setAttribute("datetime", data.state_changed_at || "");
      }
      set("state_label", look.label);
      set("deadline", data.deadline ? utc(data.deadline) : "");
      set("host", data.host);
      set("gpu_indexes", (data.gpu_indexes || []).join(", "));
      set("placement_note", data.placement_note);
      set("runtime", data.runtime);
      set("endpoint", data.endpoint);
      set("restart_count", data.restart_count);
      set("next_restart_at", data.next_restart_at ? utc(data.next_restart_at) : "");
      set("failure_cause", data.failure_cause);
      set("failure_detail", data.failure_detail);
      set("next_step", data.next_step);
      set("replicas_text", data.replicas && data.replicas.text);  // "2/3 replicas running"
      var failure = document.getElementById("failure");
      if (failure) failure.hidden = data.state !== "failed";
      root.querySelectorAll("[data-states]").forEach(function (el) {
        el.hidden = el.dataset.states.split(" ").indexOf(data.state) < 0;
      });
      // The actions the state allows, from the one table the services use (deployments/serving/actions.py).
      root.querySelectorAll("[data-action]").forEach(function (el) {
        el.hidden = (data.actions || []).indexOf(el.dataset.action) < 0;
      });
      showJobStatus(data.job_status);
      root.dataset.state = data.state;
      var job = data.job === null || data.job === undefined ? "" : String(data.job);
      if (job !== (root.dataset.job || "")) location.reload();  // a new launch: its logs are another stream
    }

    function tick() {
      fetch(root.dataset.api, { credentials: "same-origin", headers: { Accept: "application/json" } })
        .then(function (response) {
          if (response.status === 404) return null;  // deleted meanwhile
          return response.ok ? response.json() : null;
        })
        .then(function (data) { if (data) apply(data); })
        .catch(function () {})
        .then(function () { setTimeout(tick, POLL_MS); });
    }
    setTimeout(tick, POLL_MS);
  }

  document.addEventListener("DOMContentLoaded", function () { logs(); poll(); });
})();
