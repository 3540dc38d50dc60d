// The VRAM planner's form: only the chosen backend's limits and choices show (backend_fields.js, as on the deploy
// form).
(function () {
  "use strict";

  function start() {
    var form = document.getElementById("sizing-form");
    var select = form && form.elements.namedItem("backend");
    if (!select) return;

    function showBackend() { window.llmdeploy.showBackendFields(form, select.value); }

    select.addEventListener("change", showBackend);
    showBackend();
  }

  document.addEventListener("DOMContentLoaded", start);
})();
