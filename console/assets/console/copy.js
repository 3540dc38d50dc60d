// Copy buttons: a button with data-copy-target="<selector>" copies that element's text to the clipboard and says
// so on itself for a moment (data-copied-label; data-failed-label when the browser refuses, e.g. over plain HTTP).
(function () {
  "use strict";

  function flash(button, label) {
    button.dataset.label = button.dataset.label || button.textContent;
    button.textContent = label;
    window.setTimeout(function () {
      button.textContent = button.dataset.label;
    }, 2000);
  }

  function selectText(element) {
    var range = document.createRange();
    range.selectNodeContents(element);
    var selection = window.getSelection();
    selection.removeAllRanges();
    selection.addRange(range);
  }

  function start() {
    document.querySelectorAll("button[data-copy-target]").forEach(function (button) {
      button.addEventListener("click", function () {
        var source = document.querySelector(button.dataset.copyTarget);
        if (!source) return;
        var text = source.textContent.trim();
        var failed = function () {
          selectText(source); // the person can still copy it by hand
          flash(button, button.dataset.failedLabel || button.textContent);
        };
        if (!navigator.clipboard || !window.isSecureContext) {
          failed();
          return;
        }
        navigator.clipboard.writeText(text).then(function () {
          button.dataset.copied = "true";
          flash(button, button.dataset.copiedLabel || button.textContent);
        }, failed);
      });
    });
  }

  document.addEventListener("DOMContentLoaded", start);
})();
