// The audit log page, live: new events from /ws/audit/ (see console/streams.py for the protocol).
// On the unfiltered first page they are prepended (the server's row markup, filled with textContent);
// elsewhere a banner counts them. Duplicates are dropped by seq; reconnects resume after the last seq.
(function () {
  "use strict";

  function text(value) {
    if (value === null || value === undefined) return "";
    return typeof value === "string" ? value : JSON.stringify(value);
  }

  function utc(iso) {
    var date = new Date(iso);
    return isNaN(date.getTime()) ? iso : date.toISOString().slice(0, 19).replace("T", " ");
  }

  function fill(node, field, value) {
    var el = node.querySelector('[data-field="' + field + '"]');
    if (el) el.textContent = value;
    return el;
  }

  function showPart(node, part, visible) {
    node.querySelectorAll('[data-part="' + part + '"]').forEach(function (el) { el.hidden = !visible; });
  }

  function buildRow(template, labels, item) {
    var node = template.content.firstElementChild.cloneNode(true);
    node.dataset.seq = item.seq;
    fill(node, "id", String(item.id));
    fill(node, "time", utc(item.time)).setAttribute("datetime", item.time);
    fill(node, "actor", text(item.actor));
    fill(node, "roles", (item.roles || []).join(", "));
    fill(node, "action", text(item.action));
    fill(node, "target_type", text(item.target_type));
    fill(node, "target_id", text(item.target_id));
    fill(node, "target_name", text(item.target_name));
    fill(node, "source", labels.source[item.source] || text(item.source));
    var badge = fill(node, "outcome", labels.outcome[item.outcome] || text(item.outcome));
    badge.className = "badge " + (labels.badges[item.outcome] || "text-bg-secondary");
    fill(node, "request_id", item.request_id || "—");
    fill(node, "client_ip", item.client_ip || "—");
    var diff = item.diff || {}, body = node.querySelector('[data-part="diff"] tbody');
    Object.keys(diff).forEach(function (field) {
      var change = Array.isArray(diff[field]) && diff[field].length === 2 ? diff[field] : [null, diff[field]];
      var tr = document.createElement("tr"), name = document.createElement("td"), code = document.createElement("code");
      code.textContent = field;
      name.appendChild(code);
      tr.appendChild(name);
      change.forEach(function (value, i) {
        var td = document.createElement("td");
        td.dataset.diff = i ? "after" : "before";
        td.textContent = text(value) || "—";
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
    showPart(node, "diff", Object.keys(diff).length > 0);
    // The stream's items may lack the hash and the detail: those parts stay hidden until a reload.
    showPart(node, "hash", !!item.hash);
    if (item.hash) fill(node, "hash", item.hash);
    var detail = item.detail && Object.keys(item.detail).length ? JSON.stringify(item.detail, null, 2) : "";
    showPart(node, "detail", !!detail);
    fill(node, "detail", detail);
    return node;
  }

  function start() {
    var list = document.getElementById("audit-events");
    var template = document.getElementById("audit-event-template");
    var labelsNode = document.getElementById("audit-labels");
    if (!list || !template || !labelsNode || !window.WebSocket) return;
    var labels = JSON.parse(labelsNode.textContent);
    var banner = document.getElementById("audit-new-events");
    var live = list.dataset.live === "1";
    var pageSize = parseInt(list.dataset.pageSize, 10) || 50;
    var lastSeq = parseInt(list.dataset.after, 10) || 0;
    var unseen = 0;

    function rows() { return list.querySelectorAll("details.audit-event"); }

    function prepend(items) {
      var empty = document.getElementById("audit-empty");
      if (empty) empty.remove();
      var header = list.firstElementChild;
      items.forEach(function (item) {
        header.insertAdjacentElement("afterend", buildRow(template, labels, item));
      });
      var all = rows();
      for (var i = all.length - 1; i >= pageSize; i--) all[i].remove();
    }

    function announce(count) {
      unseen += count;
      banner.querySelector("[data-count]").textContent = String(unseen);
      banner.querySelector("[data-label]").textContent = labels.new_events;
      banner.hidden = false;
    }

    window.consoleStream(list.dataset.ws, {
      after: lastSeq,
      onItems: function (fresh, seq) {
        lastSeq = seq;
        list.dataset.after = String(lastSeq);
        if (live) prepend(fresh);
        else announce(fresh.length);
      },
      onState: function (state) {
        list.dataset.stream = state === "connecting" ? (list.dataset.stream || "backfilling") : state;
      },
    });
  }

  document.addEventListener("DOMContentLoaded", start);
})();
