// The error summary of a form page (templates/includes/_error_summary.html): a link moves the focus to its field
// (a fragment link alone only scrolls), and the summary takes the focus on load so it is read first.
(function () {
  "use strict";

  function target(link) {
    var id = decodeURIComponent(link.getAttribute("href").slice(1));
    var el = document.getElementById(id);
    if (!el) return null;
    // A group of checkboxes or radios: its first input; a hidden or disabled one: the group itself.
    if (!/^(INPUT|SELECT|TEXTAREA|BUTTON)$/.test(el.tagName)) {
      var first = el.querySelector("input:not([disabled]), select:not([disabled]), textarea:not([disabled])");
      if (first && first.offsetParent !== null) return first;
      if (!el.hasAttribute("tabindex")) el.setAttribute("tabindex", "-1");
    }
    return el;
  }

  function start() {
    var summary = document.querySelector("[data-error-summary]");
    if (!summary) return;
    summary.addEventListener("click", function (event) {
      var link = event.target.closest("a[data-error-link]");
      if (!link) return;
      var el = target(link);
      if (!el) return;
      event.preventDefault();
      el.scrollIntoView({ block: "center" });
      el.focus({ preventScroll: true });
    });
    summary.focus();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
