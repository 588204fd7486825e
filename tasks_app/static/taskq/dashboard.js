// Keeps the admin dashboard live: re-fetches its fragment on a timer and
// swaps it in. Pauses while the tab is hidden; marks the figures stale when
// a refresh fails instead of silently showing old numbers as current.
(function () {
  "use strict";
  var root = document.getElementById("taskq-dashboard");
  if (!root) { return; }
  var url = root.getAttribute("data-refresh-url");
  var seconds = parseInt(root.getAttribute("data-refresh-seconds"), 10) || 5;

  function refresh() {
    if (document.hidden) { return; }
    fetch(url, { credentials: "same-origin", headers: { "X-Requested-With": "fetch" } })
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.text();
      })
      .then(function (html) {
        root.innerHTML = html;
        root.classList.remove("taskq-stale");
      })
      .catch(function () { root.classList.add("taskq-stale"); });
  }
  window.setInterval(refresh, seconds * 1000);
  document.addEventListener("visibilitychange", refresh);
})();
