// Postern terminal: xterm.js over the portal's WebSocket bridge, and a player for the
// asciicast v2 recordings. No inline script anywhere (the content security policy
// forbids it); xterm.js makes <style> elements, which get the session's style nonce.
//
// Live: a `.terminal-panel[data-ws]` (swapped into #terminal-dock by htmx, or on the
// terminal page) opens `data-ws?cols=C&rows=R`. Keystrokes and pastes go as binary
// frames, resizes as {"type":"resize","cols":C,"rows":R}; output comes back as binary
// frames, notes as JSON text ({"type":"status"|"end", ...}). Ctrl+] moves the focus out
// of the terminal (to its Close button) so the page stays usable with the keyboard.
//
// Replay: a `.replay[data-cast]` fetches the recording and plays its "o" and "r"
// events at their times (Play/Pause, Restart, speed).
(function () {
  "use strict";

  var nonce = document.body && document.body.getAttribute("data-style-nonce");
  if (nonce) {
    var create = Document.prototype.createElement;
    Document.prototype.createElement = function (tag, options) {
      var el = create.call(this, tag, options);
      if (String(tag).toLowerCase() === "style") el.setAttribute("nonce", nonce);
      return el;
    };
  }

  var THEME = {
    background: "#101418", foreground: "#d8dee4", cursor: "#f0f3f6",
    black: "#1b1f24", red: "#ff6b6b", green: "#5fd38d", yellow: "#f2c94c",
    blue: "#5ba4f5", magenta: "#c58af9", cyan: "#4fd1d9", white: "#d8dee4",
    brightBlack: "#6e7781", brightRed: "#ff8f8f", brightGreen: "#7ee2a8",
    brightYellow: "#f7dc7a", brightBlue: "#8cc4ff", brightMagenta: "#dcb0ff",
    brightCyan: "#7ee7ee", brightWhite: "#ffffff"
  };

  function newTerminal(options) {
    var o = {
      theme: THEME, cursorBlink: true, convertEol: false, scrollback: 5000,
      fontFamily: "ui-monospace, SFMono-Regular, Menlo, Consolas, monospace", fontSize: 14
    };
    for (var k in options) o[k] = options[k];
    return new window.Terminal(o);
  }

  function setStatus(panel, text) {
    var s = panel.querySelector(".terminal-status");
    if (s) s.textContent = text;
  }

  function start(panel) {
    if (panel.getAttribute("data-started")) return;
    panel.setAttribute("data-started", "1");
    var screen = panel.querySelector(".terminal-screen");
    var close = panel.querySelector(".terminal-close");
    var url = panel.getAttribute("data-ws");
    if (!window.Terminal || !screen || !url) {
      setStatus(panel, "the terminal could not load");
      return;
    }
    var term = newTerminal({});
    var fit = window.FitAddon ? new window.FitAddon.FitAddon() : null;
    if (fit) term.loadAddon(fit);
    term.open(screen);
    if (fit) { try { fit.fit(); } catch (e) { /* hidden panel: keep the default size */ } }
    var scheme = location.protocol === "https:" ? "wss://" : "ws://";
    var ws = new WebSocket(scheme + location.host + url + "?cols=" + term.cols + "&rows=" + term.rows);
    ws.binaryType = "arraybuffer";
    var encoder = new TextEncoder();
    var ended = false;
    panel.terminal = term;

    function finish(reason) {
      if (ended) return;
      ended = true;
      panel.classList.add("ended");
      setStatus(panel, "ended: " + reason);
      term.options.cursorBlink = false;
    }

    ws.onopen = function () { setStatus(panel, "connecting…"); term.focus(); };
    ws.onmessage = function (e) {
      if (typeof e.data === "string") {
        var note;
        try { note = JSON.parse(e.data); } catch (err) { return; }
        if (note && note.type === "status") setStatus(panel, String(note.text));
        if (note && note.type === "end") finish(String(note.reason));
        return;
      }
      if (!ended) setStatus(panel, "connected");
      term.write(new Uint8Array(e.data));
    };
    ws.onclose = function () { finish("connection closed"); };
    ws.onerror = function () { finish("the connection failed"); };
    term.onData(function (data) {
      if (ws.readyState === WebSocket.OPEN) ws.send(encoder.encode(data));
    });
    term.onBinary(function (data) {
      if (ws.readyState !== WebSocket.OPEN) return;
      var bytes = new Uint8Array(data.length);
      for (var i = 0; i < data.length; i++) bytes[i] = data.charCodeAt(i) & 0xff;
      ws.send(bytes);
    });
    term.onResize(function (size) {
      if (ws.readyState === WebSocket.OPEN) {
        ws.send(JSON.stringify({ type: "resize", cols: size.cols, rows: size.rows }));
      }
    });
    term.attachCustomKeyEventHandler(function (e) {
      if (e.type === "keydown" && e.ctrlKey && e.key === "]") {
        if (close) close.focus();
        return false;
      }
      return true;
    });
    if (fit && window.ResizeObserver) {
      new ResizeObserver(function () {
        try { fit.fit(); } catch (e) { /* not laid out */ }
      }).observe(screen);
    }
    if (close) {
      close.addEventListener("click", function () {
        finish("closed");
        if (ws.readyState === WebSocket.OPEN || ws.readyState === WebSocket.CONNECTING) ws.close(1000);
        term.dispose();
        var dock = panel.parentNode;
        if (dock && dock.id === "terminal-dock" && !dock.classList.contains("terminal-page")) {
          panel.remove();
          var opener = document.getElementById("terminal-open");
          if (opener) opener.focus();
        } else {
          screen.textContent = "";
        }
      });
    }
  }

  function wireClose(panel) {
    // A panel with an error has no terminal; its Close button just removes it.
    var close = panel.querySelector(".terminal-close");
    if (!close || panel.getAttribute("data-ws") || close.getAttribute("data-wired")) return;
    close.setAttribute("data-wired", "1");
    close.addEventListener("click", function () { panel.remove(); });
  }

  // --- Replay ----------------------------------------------------------------------

  function parseCast(text) {
    var lines = text.split("\n");
    var header = JSON.parse(lines[0]);
    if (!header || header.version !== 2) throw new Error("not an asciicast v2 recording");
    var events = [];
    for (var i = 1; i < lines.length; i++) {
      if (!lines[i]) continue;
      var e = JSON.parse(lines[i]);
      if (Array.isArray(e) && typeof e[0] === "number" && (e[1] === "o" || e[1] === "r")) {
        events.push(e);
      }
    }
    return { header: header, events: events };
  }

  function clock(t) {
    var m = Math.floor(t / 60);
    var s = (t - m * 60).toFixed(1);
    return m + ":" + (t - m * 60 < 10 ? "0" + s : s);
  }

  function replay(section) {
    if (section.getAttribute("data-started")) return;
    section.setAttribute("data-started", "1");
    var screen = section.querySelector(".replay-screen");
    var play = section.querySelector(".replay-play");
    var restart = section.querySelector(".replay-restart");
    var speed = section.querySelector(".replay-speed");
    var time = section.querySelector(".replay-time");
    var cast = null, term = null, index = 0, position = 0, timer = null, playing = false;

    function reset() {
      if (term) term.dispose();
      term = newTerminal({ cols: cast.header.width, rows: cast.header.height, cursorBlink: false, disableStdin: true });
      term.open(screen);
      index = 0;
      position = 0;
      time.textContent = clock(0);
    }
    function rate() { return Number(speed && speed.value) || 1; }
    function step() {
      timer = null;
      if (!playing) return;
      while (index < cast.events.length && cast.events[index][0] <= position + 0.0001) {
        var e = cast.events[index++];
        if (e[1] === "o") term.write(e[2]);
        else {
          var m = /^(\d+)x(\d+)$/.exec(e[2]);
          if (m) term.resize(Number(m[1]), Number(m[2]));
        }
      }
      time.textContent = clock(position) + " / " + clock(cast.duration);
      if (index >= cast.events.length) {
        playing = false;
        play.textContent = "Play";
        section.setAttribute("data-done", "1");
        return;
      }
      // Wait for the next event as recorded, idle gaps capped at 2 s (as asciinema's
      // idle limit does), faster by the chosen speed.
      var next = cast.events[index][0];
      var gap = Math.min(Math.max(next - position, 0), 2);
      timer = setTimeout(function () {
        position = next;
        step();
      }, (gap * 1000) / rate());
    }
    function toggle() {
      if (!cast) return;
      if (index >= cast.events.length) reset();
      playing = !playing;
      play.textContent = playing ? "Pause" : "Play";
      if (playing) step();
      else if (timer) { clearTimeout(timer); timer = null; }
    }

    play.disabled = true;
    fetch(section.getAttribute("data-cast"), { credentials: "same-origin" })
      .then(function (r) {
        if (!r.ok) throw new Error("the recording could not be loaded (" + r.status + ")");
        return r.text();
      })
      .then(function (text) {
        cast = parseCast(text);
        var end = cast.events.length ? cast.events[cast.events.length - 1][0] : 0;
        cast.duration = end;
        reset();
        time.textContent = clock(0) + " / " + clock(end);
        play.disabled = false;
        play.addEventListener("click", toggle);
        restart.addEventListener("click", function () {
          if (timer) clearTimeout(timer);
          timer = null;
          playing = false;
          play.textContent = "Play";
          reset();
          section.removeAttribute("data-done");
        });
        toggle();
      })
      .catch(function (err) {
        time.textContent = String(err.message || err);
      });
  }

  function scan(root) {
    var panels = root.querySelectorAll(".terminal-panel");
    for (var i = 0; i < panels.length; i++) {
      if (panels[i].getAttribute("data-ws")) start(panels[i]);
      else wireClose(panels[i]);
    }
    var replays = root.querySelectorAll(".replay[data-cast]");
    for (var j = 0; j < replays.length; j++) replay(replays[j]);
  }

  scan(document);
  document.addEventListener("htmx:afterSettle", function (e) {
    scan(e.detail && e.detail.elt ? e.detail.elt : document);
  });
})();
