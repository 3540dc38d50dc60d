// The health check's report page while the run is queued or running: reload every few seconds until it is done.
(function () {
  const live = document.getElementById("health-live");
  if (!live || live.dataset.live !== "1") return;
  window.setTimeout(() => window.location.reload(), Number(live.dataset.every || 5000));
})();
