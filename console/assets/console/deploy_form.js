// The deploy/edit form: as fields change, ask the planner (POST /api/v1/deployments/plan/, session + CSRF) whether
// the spec fits and which command it runs, and show its field errors under the fields and, by field name with a
// link to each, in the planner panel. Only the GPUs of the chosen model's host are offered. After a review, any change hides the Deploy button until the next review.
// Only the chosen backend's fields and choices show (data-backends); the others are disabled, so neither the form
// nor the planner sends them.
(function () {
  "use strict";

  var SAFE = /^[A-Za-z0-9_@%+=:,.\/-]+$/;

  // Like Python's shlex.quote, so the live command reads as the server-rendered one.
  function quote(arg) {
    if (arg === "") return "''";
    return SAFE.test(arg) ? arg : "'" + arg.replace(/'/g, "'\"'\"'") + "'";
  }

  // Like deployments_extras.gb: bytes as GB (10^9), one decimal.
  function gb(bytes) {
    if (bytes === null || bytes === undefined || bytes === "") return "—";
    return (Number(bytes) / 1e9).toLocaleString("en-US", { minimumFractionDigits: 1, maximumFractionDigits: 1 }) + " GB";
  }

  function start() {
    var form = document.getElementById("deployment-form");
    if (!form) return;
    var labels = document.getElementById("plan-labels").dataset;
    var hosts = JSON.parse(document.getElementById("artifact-hosts").textContent || "{}");
    var panel = document.getElementById("plan-panel");
    var reviewed = form.dataset.reviewed === "1";
    var timer = null, sequence = 0;

    function field(name) { return form.elements.namedItem(name); }
    function value(name) { var el = field(name); return el ? el.value.trim() : ""; }
    function number(name) { var v = value(name); return v === "" ? null : Number(v); }
    function planEl(name) { return panel.querySelector('[data-plan="' + name + '"]'); }

    function showGpus() {
      var host = hosts[value("artifact")];
      var cpu = value("device") === "cpu";
      var shown = 0;
      form.querySelectorAll("[data-gpu-host]").forEach(function (row) {
        var mine = String(host) === row.dataset.gpuHost;
        row.hidden = !mine;
        var box = row.querySelector("input");
        box.disabled = !mine || cpu;
        if (!mine) box.checked = false;
        if (mine) shown++;
      });
      document.getElementById("gpu-none").hidden = !host || shown > 0;
      var shards = field("num_shard");
      if (shards) shards.disabled = cpu;
    }

    function backend() { return value("backend") || "tgi"; }

    function showBackend() { window.llmdeploy.showBackendFields(form, backend()); }

    // A field the chosen backend does not read (its wrapper hidden) is left out of the planner's spec.
    function unread(name) {
      var wrapper = form.querySelector('[data-field="' + name + '"][data-backends]');
      return Boolean(wrapper && wrapper.hidden);
    }

    function clearErrors() {
      form.querySelectorAll("[data-plan-error]").forEach(function (el) { el.hidden = true; el.textContent = ""; });
      var box = document.getElementById("plan-error");
      box.hidden = true;
      box.textContent = "";
    }

    // A field's label as the form shows it (the API names fields by their spec names, as the form does).
    function labelOf(name) {
      var label = form.querySelector('label[for="id_' + name + '"]') ||
                  form.querySelector('[data-field="' + name + '"] .form-label');
      return label ? label.textContent.trim() : name;
    }

    // The panel's list of field errors: "<label>: <message>", the label a link that focuses the field.
    function listInPanel(name, text) {
      var box = document.getElementById("plan-error");
      var list = box.querySelector("ul") || box.appendChild(document.createElement("ul"));
      list.className = "mb-0 ps-3";
      var item = document.createElement("li");
      item.dataset.planErrorField = name;
      var link = document.createElement("a");
      link.className = "alert-link";
      link.href = "#id_" + name;
      link.textContent = labelOf(name);
      link.addEventListener("click", function (event) {
        var target = document.getElementById("id_" + name);
        if (!target) return;
        event.preventDefault();
        var input = /^(INPUT|SELECT|TEXTAREA)$/.test(target.tagName) ? target : target.querySelector("input:not([disabled])");
        (input || target).scrollIntoView({ block: "center" });
        (input || target).focus({ preventScroll: true });
      });
      item.appendChild(link);
      item.appendChild(document.createTextNode(": " + text));
      list.appendChild(item);
      box.hidden = false;
    }

    function showError(name, messages) {
      var text = Array.isArray(messages) ? messages.join(" ") : String(messages);
      var el = name ? form.querySelector('[data-plan-error="' + name + '"]') : null;
      if (el) {
        el.textContent = text;
        el.hidden = false;
        listInPanel(name, text);
        return;
      }
      var box = document.getElementById("plan-error");
      var line = document.createElement("div");
      line.textContent = name ? name + ": " + text : text;
      box.insertBefore(line, box.firstChild);
      box.hidden = false;
    }

    function json(name, empty) {
      var text = value(name);
      if (!text) return empty;
      try {
        return JSON.parse(text);
      } catch (e) {  // the server's one wording ("Not valid JSON: %(error)s."), with the browser's parser message
        throw { field: name, message: labels.json.replace("%(error)s", String(e.message).replace(/\.$/, "")) };
      }
    }

    function spec() {
      var values = {
        artifact: number("artifact"),
        backend: backend(),
        device: value("device") || "gpu",
        quantize: value("quantize"),
        dtype: value("dtype"),
        kv_cache_dtype: value("kv_cache_dtype"),
        num_shard: value("device") === "cpu" ? null : number("num_shard"),
        gpu_indexes: Array.prototype.filter.call(form.querySelectorAll("input[name=gpu_indexes]"), function (box) {
          return box.checked && !box.disabled;
        }).map(function (box) { return Number(box.dataset.index); }),
        max_input_tokens: number("max_input_tokens"),
        max_total_tokens: number("max_total_tokens"),
        max_batch_prefill_tokens: number("max_batch_prefill_tokens"),
        replicas: number("replicas") || 1,
        max_concurrent_requests: number("max_concurrent_requests") || 128,
        cuda_memory_fraction: number("cuda_memory_fraction") || 1.0,
        gpu_memory_utilization: number("gpu_memory_utilization"),
        max_model_len: number("max_model_len"),
        max_num_seqs: number("max_num_seqs"),
        max_num_batched_tokens: number("max_num_batched_tokens"),
        image: value("image"),
        extra_env: unread("extra_env") ? {} : json("extra_env", {}),
        lora_adapters: unread("lora_adapters") ? [] : json("lora_adapters", []),
        credential: number("credential")
      };
      Object.keys(values).forEach(function (name) { if (unread(name)) delete values[name]; });
      return values;
    }

    function setStatus(kind, verdict, reason) {
      var status = document.getElementById("plan-status");
      status.className = "alert py-2 mb-2 " + ({ yes: "alert-success", no: "alert-danger", unknown: "alert-secondary" }[kind]
                                               || "alert-light border");
      status.dataset.fits = kind;
      planEl("verdict").textContent = verdict;
      planEl("reason").textContent = reason || "";
    }

    function show(result) {
      var v = result.verdict || {};
      var kind = v.fits === true ? "yes" : v.fits === false ? "no" : "unknown";
      setStatus(kind, { yes: labels.fits, no: labels.noFit, unknown: labels.unknown }[kind], v.reason);
      document.getElementById("plan-facts").hidden = false;
      planEl("host").textContent = v.host || "—";
      planEl("copy").hidden = !v.copy_to_host;  // placement chose a host without the files: fetched there first
      planEl("device").textContent = (v.device || "—").toUpperCase();
      planEl("gpus").textContent = (v.gpu_indexes || []).length ? v.gpu_indexes.join(", ") : "—";
      if ((v.replicas || []).length > 1) {  // each replica on GPUs of its own: "host-a 0 · host-a 1"
        planEl("gpus").textContent = v.replicas.map(function (r) { return r.host + " " + r.gpu_indexes.join(","); }).join(" · ");
      }
      planEl("num_shard").textContent = v.num_shard || "—";
      planEl("per_gpu").textContent = v.per_gpu_bytes ? gb(v.per_gpu_bytes) : "—";
      planEl("weights_kv").textContent = v.weight_bytes ? gb(v.weight_bytes) + " / " + gb(v.kv_bytes) : "—";
      planEl("max_total_tokens").textContent = v.max_total_tokens || "—";
      // vLLM's verdict sizes its share of each GPU: the limit shown is max_model_len, and the details say the rest.
      panel.querySelectorAll("[data-plan-label]").forEach(function (label) {
        label.hidden = (label.dataset.planLabel === "vllm") !== Boolean(v.vllm);
      });
      var details = document.getElementById("plan-details");
      details.textContent = "";
      (v.details || []).forEach(function (detail) {
        var li = document.createElement("li");
        li.textContent = detail;
        details.appendChild(li);
      });
      details.hidden = !(v.details || []).length;
      var list = document.getElementById("plan-warnings");
      list.textContent = "";
      (v.warnings || []).forEach(function (warning) {
        if (v.reason && v.reason.indexOf(warning) >= 0) return;  // already the reason
        var li = document.createElement("li");
        li.textContent = warning;
        list.appendChild(li);
      });
      document.getElementById("plan-command").textContent = (result.command || []).map(quote).join(" ") || "—";
    }

    function failed(errors) {
      var general = ["detail", "code", "non_field_errors"];
      var named = Object.keys(errors).some(function (name) { return general.indexOf(name) < 0; });
      // Field errors are the user's to correct, by name; only an answer without them is the planner's failure.
      setStatus("no", named ? labels.fix : labels.failed, "");
      document.getElementById("plan-command").textContent = "—";
      document.getElementById("plan-details").hidden = true;
      Object.keys(errors).forEach(function (name) {
        var messages = errors[name];
        if (name === "spec" && messages && !Array.isArray(messages)) {
          Object.keys(messages).forEach(function (inner) { showError(inner, messages[inner]); });
        } else if (name !== "code") {
          showError(name === "detail" || name === "non_field_errors" ? "" : name, messages);
        }
      });
    }

    function plan() {
      clearErrors();
      if (!value("artifact")) {
        setStatus("", labels.choose, "");
        document.getElementById("plan-facts").hidden = true;
        return;
      }
      var body;
      try {
        body = { spec: spec(), name: value("name") || form.dataset.name || "preview" };
      } catch (error) {
        failed({ [error.field]: [error.message] });
        return;
      }
      if (form.dataset.deployment) body.deployment = Number(form.dataset.deployment);
      var mine = ++sequence;
      var busy = document.getElementById("plan-busy");
      busy.hidden = false;
      fetch(form.dataset.planUrl, {
        method: "POST", credentials: "same-origin",
        headers: { "Content-Type": "application/json", Accept: "application/json",
                   "X-CSRFToken": field("csrfmiddlewaretoken").value },
        body: JSON.stringify(body)
      }).then(function (response) {
        return response.json().then(function (data) { return { ok: response.ok, data: data }; });
      }).then(function (result) {
        if (mine !== sequence) return;  // an older answer arriving late
        busy.hidden = true;
        if (result.ok) show(result.data); else failed(result.data || {});
      }).catch(function (error) {
        if (mine !== sequence) return;
        busy.hidden = true;
        failed({ detail: String(error) });
      });
    }

    function changed(event) {
      if (event && event.target && event.target.name === "note") return;
      if (event && event.target && (event.target.name === "artifact" || event.target.name === "device")) showGpus();
      if (event && event.target && event.target.name === "backend") showBackend();
      if (reviewed) {
        var confirm = document.getElementById("confirm-deploy");
        if (confirm) confirm.disabled = true;
        var stale = document.getElementById("review-stale");
        if (stale) stale.hidden = false;
      }
      clearTimeout(timer);
      timer = setTimeout(plan, 400);
    }

    form.addEventListener("input", changed);
    form.addEventListener("change", changed);
    showGpus();
    showBackend();
    // A review page shows the server's answer already; elsewhere ask at once (an edit, a model chosen).
    if (!reviewed && value("artifact")) plan();
  }

  document.addEventListener("DOMContentLoaded", start);
})();
