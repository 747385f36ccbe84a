// Live updates: one WebSocket to /live per page, turned into DOM events other scripts listen to.
//
//   document "parley:event"        detail {topic, payload, id}   every server event (id null: typing)
//   document "parley:reconnected"  detail {resync, replayed}     after a reconnect has caught up:
//                                                                pages re-fetch what they show
//   document "parley:resync"       detail {}                     the server could not replay all
//                                                                that was missed: reload the data
//
// The page remembers the last event id and reconnects with ?after=<id> (exponential backoff with
// jitter, at most ~10 s), so nothing committed while it was away is lost. `window.parley.live.send`
// sends a frame (typing). No inline styles: the banner is shown by toggling a class (live.css).
(function () {
  "use strict";
  if (!document.body || !document.body.dataset.userId || !window.WebSocket) {
    return;
  }
  const MAX_DELAY_MS = 10000;
  const BASE_DELAY_MS = 500;
  const SEEN_LIMIT = 2000;

  let socket = null;
  let cursor = 0;
  let attempts = 0;
  let everReady = false;
  let timer = null;
  let stopped = false;
  const seen = new Set();
  const seenOrder = [];

  const banner = document.createElement("div");
  banner.className = "live-banner";
  banner.setAttribute("role", "status");
  banner.setAttribute("aria-live", "polite");
  banner.textContent = "Reconnecting…";
  document.body.appendChild(banner);

  function showBanner(shown) {
    banner.classList.toggle("live-banner--shown", shown);
    document.body.classList.toggle("live-offline", shown);
  }

  function emit(name, detail) {
    document.dispatchEvent(new CustomEvent(name, { detail: detail }));
  }

  function remember(id) {
    seen.add(id);
    seenOrder.push(id);
    if (seenOrder.length > SEEN_LIMIT) {
      seen.delete(seenOrder.shift());
    }
    if (id > cursor) {
      cursor = id;
    }
  }

  function url() {
    const scheme = window.location.protocol === "https:" ? "wss:" : "ws:";
    const after = cursor > 0 ? "?after=" + encodeURIComponent(String(cursor)) : "";
    return scheme + "//" + window.location.host + "/live" + after;
  }

  function onMessage(message) {
    let frame;
    try {
      frame = JSON.parse(message.data);
    } catch (error) {
      return;
    }
    if (frame.type === "event") {
      if (typeof frame.id === "number") {
        if (seen.has(frame.id)) {
          return; // delivered at least once: a replay after a retry may repeat one
        }
        remember(frame.id);
      }
      emit("parley:event", { topic: frame.topic, payload: frame.payload || {}, id: frame.id });
    } else if (frame.type === "resync") {
      emit("parley:resync", {});
    } else if (frame.type === "ready") {
      if (typeof frame.cursor === "number" && frame.cursor > cursor) {
        cursor = frame.cursor;
      }
      attempts = 0;
      showBanner(false);
      if (everReady) {
        emit("parley:reconnected", { resync: !!frame.resync, replayed: frame.replayed || 0 });
      }
      everReady = true;
      live.connected = true;
    } else if (frame.type === "error") {
      if (window.console) {
        window.console.warn("live:", frame.code, frame.message);
      }
    }
  }

  function connect() {
    timer = null;
    if (stopped) {
      return;
    }
    let ws;
    try {
      ws = new WebSocket(url());
    } catch (error) {
      schedule();
      return;
    }
    socket = ws;
    ws.addEventListener("message", onMessage);
    ws.addEventListener("close", function (event) {
      if (socket !== ws) {
        return;
      }
      socket = null;
      live.connected = false;
      if (event.code === 4401) {
        // Signed out (here or in another tab), or the account was deactivated: sign in again.
        stopped = true;
        window.location.assign("/login?next=" + encodeURIComponent(window.location.pathname + window.location.search));
        return;
      }
      if (!stopped) {
        showBanner(true);
        schedule();
      }
    });
  }

  function schedule() {
    if (timer !== null || stopped) {
      return;
    }
    const ceiling = Math.min(MAX_DELAY_MS, BASE_DELAY_MS * Math.pow(2, attempts));
    attempts += 1;
    const delay = ceiling / 2 + Math.random() * (ceiling / 2); // equal jitter
    timer = window.setTimeout(connect, delay);
  }

  function reconnectNow() {
    if (socket === null && timer !== null) {
      window.clearTimeout(timer);
      connect();
    }
  }

  const live = {
    connected: false,
    get cursor() {
      return cursor;
    },
    send: function (obj) {
      if (socket === null || socket.readyState !== WebSocket.OPEN) {
        return false;
      }
      socket.send(JSON.stringify(obj));
      return true;
    },
    // Typing in a conversation's composer: call on input (throttled here), and with false on send.
    typing: (function () {
      const last = new Map();
      return function (conversationId, typing) {
        const now = Date.now();
        const on = typing !== false;
        if (on && now - (last.get(conversationId) || 0) < 3000) {
          return false;
        }
        last.set(conversationId, on ? now : 0);
        return live.send({ type: "typing", conversation_id: conversationId, typing: on });
      };
    })(),
  };
  window.parley = window.parley || {};
  window.parley.live = live;

  window.addEventListener("online", reconnectNow);
  window.addEventListener("pagehide", function () {
    stopped = true;
    if (socket !== null) {
      socket.close(1000, "page closed");
    }
  });
  connect();
})();
