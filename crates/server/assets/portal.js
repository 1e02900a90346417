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

// Credentials and details open in a <dialog>; copy buttons; after a refused form, the
// first field in error takes the focus.
(function () {
  "use strict";
  function dialog() { return document.getElementById("dialog"); }
  document.addEventListener("htmx:afterSwap", function (e) {
    var target = e.detail.target;
    if (target && target.id === "dialog-body") {
      var d = dialog();
      if (d && !d.open) d.showModal();
      var first = target.querySelector("button, a[href]");
      if (first) first.focus();
    }
  });
  document.addEventListener("htmx:afterSettle", function (e) {
    // The swapped element may be gone (outerHTML): look in the page, after a post.
    var config = e.detail.requestConfig;
    if (!config || config.verb !== "post") return;
    var bad = document.querySelector("form [aria-invalid=true]");
    if (bad) bad.focus();
  });
  document.addEventListener("close", function (e) {
    // The login leaves the page when the dialog closes.
    if (e.target && e.target.id === "dialog") {
      var body = document.getElementById("dialog-body");
      if (body) body.textContent = "";
    }
  }, true);
  function copied(button, ok) {
    var words = button.textContent;
    button.textContent = ok ? "Copied" : "Select and copy";
    setTimeout(function () { button.textContent = words; }, 1500);
  }
  function fallbackCopy(text) {
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.className = "offscreen";
    document.body.appendChild(area);
    area.select();
    var ok = false;
    try { ok = document.execCommand("copy"); } catch (err) { ok = false; }
    document.body.removeChild(area);
    return ok;
  }
  document.addEventListener("click", function (e) {
    var el = e.target && e.target.closest ? e.target.closest("button.copy, .close-dialog") : null;
    if (!el) return;
    if (el.classList.contains("close-dialog")) {
      var d = dialog();
      if (d && d.open) { e.preventDefault(); d.close(); }
      return;
    }
    var text = el.getAttribute("data-copy") || "";
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(
        function () { copied(el, true); },
        function () { copied(el, fallbackCopy(text)); }
      );
    } else {
      copied(el, fallbackCopy(text));
    }
  });
})();
