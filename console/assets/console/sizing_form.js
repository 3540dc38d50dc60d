// The VRAM planner's form: only the chosen backend's limits and choices show (data-backends, as on the deploy
// form); the others are disabled, so the form does not send them (the server ignores them anyway).
(function () {
  "use strict";

  function start() {
    var form = document.getElementById("sizing-form");
    var select = form && form.elements.namedItem("backend");
    if (!select) return;

    function offered(el) { return el.dataset.backends.split(" ").indexOf(select.value || "tgi") >= 0; }

    function showBackend() {
      form.querySelectorAll("[data-field][data-backends]").forEach(function (wrapper) {
        var mine = offered(wrapper);
        wrapper.hidden = !mine;
        wrapper.querySelectorAll("input, select, textarea").forEach(function (input) { input.disabled = !mine; });
      });
      form.querySelectorAll("option[data-backends]").forEach(function (option) {
        var mine = offered(option);
        option.hidden = !mine;
        option.disabled = !mine;
        if (!mine && option.selected) option.parentNode.value = "";  // back to "as stored" / the model's own
      });
    }

    select.addEventListener("change", showBackend);
    showBackend();
  }

  document.addEventListener("DOMContentLoaded", start);
})();
