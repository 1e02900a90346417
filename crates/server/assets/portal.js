// Postern portal: live countdowns to expiry, and <details> that stay as the reader left
// them when a list refreshes itself. The server's clock (body[data-now]) is the
// reference, so a browser with a wrong clock still counts right. No inline script
// anywhere: the content security policy forbids it.
(function () {
  "use strict";
  var skew = 0;
  var now = document.body && document.body.getAttribute("data-now");
  if (now) {
    var server = Date.parse(now);
    if (!isNaN(server)) skew = server - Date.now();
  }
  function two(n) { return n < 10 ? "0" + n : String(n); }
  function left(ms) {
    if (ms <= 0) return "expired";
    var s = Math.floor(ms / 1000);
    var h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60);
    s = s % 60;
    return (h > 0 ? h + " h " + two(m) + " min" : m + " min " + two(s) + " s");
  }
  function tick() {
    var items = document.querySelectorAll("time.countdown[datetime]");
    for (var i = 0; i < items.length; i++) {
      var at = Date.parse(items[i].getAttribute("datetime"));
      if (!isNaN(at)) items[i].textContent = left(at - (Date.now() + skew));
    }
  }
  tick();
  setInterval(tick, 1000);
  document.addEventListener("htmx:afterSwap", tick);

  // A list that refreshes itself keeps each <details> as the reader left it.
  var shown = {};
  document.addEventListener("htmx:beforeSwap", function (e) {
    shown = {};
    var items = e.detail.target ? e.detail.target.querySelectorAll("details[id]") : [];
    for (var i = 0; i < items.length; i++) shown[items[i].id] = items[i].open;
  });
  document.addEventListener("htmx:afterSettle", function () {
    for (var id in shown) {
      var d = document.getElementById(id);
      if (d) d.open = shown[id];
    }
    shown = {};
  });
})();
