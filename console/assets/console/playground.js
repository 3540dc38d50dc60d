// The playground of a running deployment over /ws/deployments/<id>/playground/ (deployments/jobs/consumers.py):
// send {"type": "generate", "mode", "prompt" | "messages", "parameters"}; tokens arrive as {"type": "token"} and
// are appended as they come; {"type": "end"} carries the counts and timings; {"type": "error"} is shown as a line.
// One generation at a time. The socket reconnects after a drop, except when it was refused (44xx).
(function () {
  "use strict";

  function start() {
    var root = document.getElementById("playground");
    if (!root || root.dataset.running !== "1" || !window.WebSocket) return;
    var labels = root.dataset;
    var mode = "completion", socket = null, retry = 1000, busy = false;
    var messages = [];           // the chat so far: {role, content}
    var target = null;           // the element tokens go into
    var produced = "";           // text of the answer being streamed
    var sendButton = document.getElementById("send");
    var stats = document.getElementById("stats");
    var errorLine = document.getElementById("playground-error");
    var stateEl = document.getElementById("socket-state");

    function setState(name) { if (stateEl) stateEl.textContent = stateEl.dataset[name] || ""; root.dataset.socket = name; }
    function showError(text) { errorLine.textContent = text; errorLine.hidden = !text; }
    function setBusy(value) { busy = value; sendButton.disabled = value; }

    function connect() {
      var scheme = location.protocol === "https:" ? "wss://" : "ws://";
      setState("connecting");
      socket = new WebSocket(scheme + location.host + root.dataset.ws);
      socket.onopen = function () { retry = 1000; setState("live"); };
      socket.onmessage = function (event) { receive(JSON.parse(event.data)); };
      socket.onclose = function (event) {
        if (busy) { showError(labels.disconnected); failGeneration(); }
        if (event.code >= 4400 && event.code < 4500) { setState("refused"); return; }
        setState("closed");
        setTimeout(connect, retry);
        retry = Math.min(retry * 2, 30000);
      };
    }

    function bubble(role, text) {
      var transcript = document.getElementById("chat-transcript");
      var empty = transcript.querySelector("[data-empty]");
      if (empty) empty.remove();
      var item = document.createElement("div");
      item.className = "mb-2";
      item.dataset.role = role;
      var who = document.createElement("div");
      who.className = "small fw-semibold " + (role === "user" ? "text-primary" : "text-success");
      who.textContent = role === "user" ? labels.user : role === "system" ? labels.system : labels.assistant;
      var body = document.createElement("div");
      body.style.whiteSpace = "pre-wrap";
      body.textContent = text;
      item.appendChild(who);
      item.appendChild(body);
      transcript.appendChild(item);
      transcript.scrollTop = transcript.scrollHeight;
      return body;
    }

    function parameters() {
      var params = {};
      document.querySelectorAll("#sampling [data-param]").forEach(function (input) {
        if (input.type === "checkbox") params[input.dataset.param] = input.checked;
        else if (input.value !== "") params[input.dataset.param] = Number(input.value);
      });
      return params;
    }

    function send() {
      if (busy) return;
      showError("");
      if (!socket || socket.readyState !== WebSocket.OPEN) { showError(labels.disconnected); return; }
      var request = { type: "generate", mode: mode, parameters: parameters() };
      if (mode === "completion") {
        var prompt = document.getElementById("prompt").value;
        if (!prompt.trim()) { showError(labels.emptyPrompt); return; }
        request.prompt = prompt;
        target = document.getElementById("completion-output");
        target.textContent = "";
      } else {
        var box = document.getElementById("chat-message");
        var text = box.value;
        if (!text.trim()) { showError(labels.emptyMessage); return; }
        messages.push({ role: "user", content: text });
        bubble("user", text);
        box.value = "";
        var system = document.getElementById("chat-system").value.trim();
        request.messages = (system ? [{ role: "system", content: system }] : []).concat(messages);
        target = bubble("assistant", "");
      }
      produced = "";
      stats.textContent = "";
      setBusy(true);
      socket.send(JSON.stringify(request));
    }

    function failGeneration() {
      if (mode === "chat" && target) {
        // The question was not answered: take it back so it can be sent again.
        target.parentNode.remove();
        var last = messages.pop();
        var box = document.getElementById("chat-message");
        if (last && !box.value) box.value = last.content;
      }
      target = null;
      setBusy(false);
    }

    function receive(data) {
      if (data.type === "token") {
        produced += data.text || "";
        if (target) target.textContent = produced;
        if (mode === "chat") {
          var transcript = document.getElementById("chat-transcript");
          transcript.scrollTop = transcript.scrollHeight;
        }
      } else if (data.type === "end") {
        if (mode === "chat") messages.push({ role: "assistant", content: produced });
        var seconds = (data.total_ms || 0) / 1000;
        var parts = [labels.tokens + ": " + (data.generated_tokens || 0),
                     labels.ttft + ": " + (data.ttft_ms === undefined ? "—" : data.ttft_ms + " ms"),
                     labels.total + ": " + (data.total_ms === undefined ? "—" : data.total_ms + " ms"),
                     labels.rate + ": " + (seconds > 0 ? ((data.generated_tokens || 0) / seconds).toFixed(1) : "—")];
        if (data.finish_reason) parts.push(labels.finish + ": " + data.finish_reason);
        stats.textContent = parts.join(" · ");
        stats.dataset.tokens = String(data.generated_tokens || 0);
        target = null;
        setBusy(false);
      } else if (data.type === "error") {
        showError(data.detail || "error");
        failGeneration();
      }
    }

    function switchMode(next) {
      if (busy) return;
      mode = next;
      document.querySelectorAll("[data-mode]").forEach(function (tab) {
        var active = tab.dataset.mode === next;
        tab.classList.toggle("active", active);
        tab.setAttribute("aria-selected", active ? "true" : "false");
      });
      document.querySelectorAll("[data-pane]").forEach(function (pane) { pane.hidden = pane.dataset.pane !== next; });
      showError("");
    }

    document.querySelectorAll("[data-mode]").forEach(function (tab) {
      tab.addEventListener("click", function () { switchMode(tab.dataset.mode); });
    });
    sendButton.addEventListener("click", send);
    document.getElementById("chat-message").addEventListener("keydown", function (event) {
      if (event.key === "Enter" && !event.shiftKey) { event.preventDefault(); send(); }
    });
    document.getElementById("prompt").addEventListener("keydown", function (event) {
      if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); send(); }
    });
    document.getElementById("clear").addEventListener("click", function () {
      if (busy) return;
      showError("");
      stats.textContent = "";
      if (mode === "completion") {
        document.getElementById("completion-output").textContent = "";
      } else {
        messages = [];
        var transcript = document.getElementById("chat-transcript");
        transcript.querySelectorAll("[data-role]").forEach(function (el) { el.remove(); });
      }
    });
    connect();
  }

  document.addEventListener("DOMContentLoaded", start);
})();
