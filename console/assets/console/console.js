// Small plain JavaScript: the live-connection indicator and the dashboard's worker check.
(function () {
  "use strict";

  function heartbeat() {
    var badge = document.getElementById("live-status");
    if (!badge) return;
    var dot = badge.querySelector(".live-dot"), text = badge.querySelector(".live-text");
    var socketStatus = document.getElementById("socket-status");
    var seq = 0, socket, timer, retry = 1000;
    function show(ok, label) {
      dot.className = "live-dot " + (ok ? "ok" : "down");
      text.textContent = label;
      if (socketStatus) socketStatus.textContent = label;
    }
    function connect() {
      var scheme = location.protocol === "https:" ? "wss://" : "ws://";
      socket = new WebSocket(scheme + location.host + badge.dataset.ws);
      socket.onopen = function () {
        retry = 1000;
        socket.send(JSON.stringify({ type: "ping", seq: ++seq }));
        timer = setInterval(function () { socket.send(JSON.stringify({ type: "ping", seq: ++seq })); }, 20000);
      };
      socket.onmessage = function (event) {
        var data = JSON.parse(event.data);
        if (data.type === "pong") show(true, badge.dataset.okLabel || "live");
      };
      socket.onclose = function () {
        clearInterval(timer);
        show(false, badge.dataset.downLabel || "offline");
        setTimeout(connect, retry);
        retry = Math.min(retry * 2, 30000);
      };
    }
    connect();
  }

  function workerStatus() {
    var cell = document.getElementById("worker-status");
    if (!cell) return;
    fetch(cell.dataset.url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (r) { return r.json().then(function (body) { return { ok: r.ok, body: body }; }); })
      .then(function (res) {
        cell.textContent = res.ok ? (cell.dataset.okLabel || "online") + " (" + res.body.round_trip_ms + " ms)"
                                  : res.body.detail;
        cell.className = "col-7 " + (res.ok ? "text-success" : "text-danger");
      })
      .catch(function () { cell.textContent = "?"; });
  }

  document.addEventListener("DOMContentLoaded", function () { heartbeat(); workerStatus(); });
})();
