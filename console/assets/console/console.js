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

  // The client of console/streams.py: subscribe after the last seq, hand on new items once each (sorted,
  // duplicates dropped), resubscribe after a drop with backoff. Refusals (44xx) are final. A stream that is over
  // sends {"type": "end", "seq": N}: once every item up to N is here the client closes, calls options.onEnd(N)
  // and reports the state "ended" (it never reconnects after that). With options.status (a function returning
  // the status the page shows, e.g. a job's), the server also sends {"type": "status"} whenever the stream's status
  // differs from it, the outcome before the end marker: options.onStatus(status) is called with it.
  window.consoleStream = function (path, options) {
    var lastSeq = options.after || 0, retry = 1000, socket, ended = false;
    var onItems = options.onItems, onState = options.onState || function () {};
    var onEnd = options.onEnd || function () {};
    var onStatus = options.onStatus || function () {};
    function receive(items) {
      var fresh = items.filter(function (item) { return item.seq > lastSeq; });
      fresh.sort(function (a, b) { return a.seq - b.seq; });
      fresh = fresh.filter(function (item, i) { return i === 0 || item.seq !== fresh[i - 1].seq; });
      if (!fresh.length) return;
      lastSeq = fresh[fresh.length - 1].seq;
      onItems(fresh, lastSeq);
    }
    function connect() {
      var scheme = location.protocol === "https:" ? "wss://" : "ws://";
      onState("connecting");
      socket = new WebSocket(scheme + location.host + path);
      socket.onopen = function () {
        retry = 1000;
        var subscribe = { type: "subscribe", after: lastSeq };
        if (options.status) subscribe.status = options.status() || "";
        socket.send(JSON.stringify(subscribe));
      };
      socket.onmessage = function (event) {
        var data = JSON.parse(event.data);
        if (data.type === "items") receive(data.items || []);
        else if (data.type === "caught_up") onState("live");
        else if (data.type === "status") onStatus(data.status);
        else if (data.type === "end" && lastSeq >= data.seq) {
          ended = true;
          socket.close();
          onState("ended");
          onEnd(data.seq);
        }
      };
      socket.onclose = function (event) {
        if (ended) return;
        onState("closed");
        if (event.code >= 4400 && event.code < 4500) return;
        setTimeout(connect, retry);
        retry = Math.min(retry * 2, 30000);
      };
    }
    connect();
  };

  document.addEventListener("DOMContentLoaded", function () { heartbeat(); workerStatus(); });
})();
