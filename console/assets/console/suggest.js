// Searchable lists: an input with data-suggest-url and a `list` attribute (a <datalist>) asks that API list for
// what matches what was typed (?<data-suggest-param>=text&page_size=20) and offers the answers. Each answer's
// data-suggest-value field becomes the option's value, data-suggest-label (optional) its label.
// data-suggest-with="name=#selector" adds another field's current value to the query (e.g. the target type);
// changing that field empties the input and its list. Without JavaScript the input still takes a typed name.
(function () {
  "use strict";

  function extraParams(input) {
    var params = {};
    (input.dataset.suggestWith || "").split(",").forEach(function (pair) {
      var parts = pair.split("=");
      if (parts.length !== 2) return;
      var source = document.querySelector(parts[1]);
      if (source) params[parts[0]] = source.value;
    });
    return params;
  }

  function fill(list, items, input) {
    var valueField = input.dataset.suggestValue || "name";
    var labelField = input.dataset.suggestLabel;
    list.replaceChildren();
    items.forEach(function (item) {
      var option = document.createElement("option");
      option.value = item[valueField];
      if (labelField && item[labelField] && item[labelField] !== option.value) option.label = item[labelField];
      list.appendChild(option);
    });
  }

  function attach(input) {
    var list = document.getElementById(input.getAttribute("list"));
    if (!list) return;
    var timer = null;
    var asked = 0;
    function ask() {
      var url = new URL(input.dataset.suggestUrl, window.location.origin);
      url.searchParams.set(input.dataset.suggestParam || "search", input.value.trim());
      url.searchParams.set("page_size", "20");
      var extra = extraParams(input);
      Object.keys(extra).forEach(function (key) {
        url.searchParams.set(key, extra[key]);
      });
      var mine = ++asked;
      fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" })
        .then(function (response) {
          return response.ok ? response.json() : { results: [] };
        })
        .then(function (data) {
          if (mine !== asked) return; // a newer question is on its way
          fill(list, Array.isArray(data) ? data : data.results || [], input);
          input.dataset.suggested = String(list.children.length);
        })
        .catch(function () {});
    }
    input.addEventListener("input", function () {
      window.clearTimeout(timer);
      timer = window.setTimeout(ask, 200);
    });
    input.addEventListener("focus", ask);
    (input.dataset.suggestWith || "").split(",").forEach(function (pair) {
      var selector = pair.split("=")[1];
      if (!selector) return; // no other field to follow (querySelector("") throws)
      var source = document.querySelector(selector);
      if (!source) return;
      source.addEventListener("change", function () {
        input.value = "";
        list.replaceChildren();
        ask();
      });
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("input[data-suggest-url][list]").forEach(attach);
  });
})();
