// Shared by the deploy form and the VRAM planner: only the chosen serving backend's fields and choices show
// (data-backends on a field's wrapper or an option); the others are disabled, so the form does not send them (the
// server ignores another backend's fields anyway).
(function () {
  "use strict";

  function showBackendFields(form, backend) {
    function offered(el) { return el.dataset.backends.split(" ").indexOf(backend || "tgi") >= 0; }
    form.querySelectorAll("[data-field][data-backends]").forEach(function (wrapper) {
      var mine = offered(wrapper);
      wrapper.hidden = !mine;
      wrapper.querySelectorAll("input, select, textarea").forEach(function (input) { input.disabled = !mine; });
    });
    form.querySelectorAll("option[data-backends]").forEach(function (option) {
      var mine = offered(option);
      option.hidden = !mine;
      option.disabled = !mine;
      if (!mine && option.selected) option.parentNode.value = "";  // back to the server's default
    });
  }

  window.llmdeploy = window.llmdeploy || {};
  window.llmdeploy.showBackendFields = showBackendFields;
})();
