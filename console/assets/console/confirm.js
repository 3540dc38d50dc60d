// Confirmation before destructive POSTs: a form with data-confirm opens the Bootstrap modal #confirm-modal with
// that text; its button (labelled from data-confirm-label) submits the form. Without the modal, window.confirm.
(function () {
  "use strict";

  function start() {
    var modalEl = document.getElementById("confirm-modal");
    var pending = null;
    var modal = modalEl && window.bootstrap ? window.bootstrap.Modal.getOrCreateInstance(modalEl) : null;
    if (modal) {
      document.getElementById("confirm-modal-ok").addEventListener("click", function () {
        var form = pending;
        pending = null;
        modal.hide();
        if (form) form.submit();
      });
    }
    document.querySelectorAll("form[data-confirm]").forEach(function (form) {
      form.addEventListener("submit", function (event) {
        event.preventDefault();
        if (!modal) {
          if (window.confirm(form.dataset.confirm)) form.submit();
          return;
        }
        pending = form;
        document.getElementById("confirm-modal-text").textContent = form.dataset.confirm;
        var ok = document.getElementById("confirm-modal-ok");
        ok.dataset.label = ok.dataset.label || ok.textContent;
        ok.textContent = form.dataset.confirmLabel || ok.dataset.label;
        ok.className = "btn " + (form.dataset.confirmClass || "btn-danger");
        modal.show();
      });
    });
  }

  document.addEventListener("DOMContentLoaded", start);
})();
