/*
 * Parley web chat widget. Embed with one tag, nothing else on the host page:
 *
 *   <script src="https://parley.example.com/widget.js" data-inbox="42" async></script>
 *
 * Logged-in users of the host site can be identified with data-identifier and
 * data-identifier-hash (hex HMAC-SHA256 of the identifier under the inbox's identity secret,
 * computed by the host site's server, never in the browser).
 *
 * Everything customers and agents write is put in the page with textContent, never as HTML, and
 * styles are set through the CSSOM, so a host page's strict Content-Security-Policy needs only to
 * allow this script's origin (script-src, connect-src).
 */
(function () {
  "use strict";

  var script = document.currentScript;
  if (!script || !script.getAttribute("data-inbox")) {
    return;
  }
  var inboxId = script.getAttribute("data-inbox");
  var scriptUrl = new URL(script.src, document.baseURI);
  var httpBase = scriptUrl.origin;
  var wsUrl = (scriptUrl.protocol === "https:" ? "wss://" : "ws://") + scriptUrl.host + "/webchat/" + encodeURIComponent(inboxId) + "/ws";
  var uploadUrl = httpBase + "/webchat/" + encodeURIComponent(inboxId) + "/uploads";
  var identifier = script.getAttribute("data-identifier");
  var identifierHash = script.getAttribute("data-identifier-hash");
  // A session per site user: a visitor who logs out does not keep the logged-in user's chat.
  var storageKey = "parley.webchat." + inboxId + (identifier ? ".user." + identifier : "");

  var saved = load();
  var socket = null;
  var ready = false;
  var retries = 0;
  var lastId = 0;
  var settings = { max_upload_bytes: 10485760 };
  var pending = {}; // client id -> frame, until the gateway says it is stored
  var byId = {};
  var byClientId = {};
  var acked = {};
  var typingSent = false;
  var typingTimer = null;
  var agentTypingTimer = null;
  var stopped = false;

  function load() {
    try {
      return JSON.parse(window.localStorage.getItem(storageKey) || "{}") || {};
    } catch (e) {
      return {};
    }
  }

  function save() {
    try {
      window.localStorage.setItem(storageKey, JSON.stringify(saved));
    } catch (e) {
      /* private mode: the chat lasts as long as the page */
    }
  }

  function newId() {
    if (window.crypto && window.crypto.randomUUID) {
      return window.crypto.randomUUID();
    }
    var b = new Uint8Array(16);
    window.crypto.getRandomValues(b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    var h = Array.prototype.map.call(b, function (x) { return (x + 0x100).toString(16).slice(1); }).join("");
    return h.slice(0, 8) + "-" + h.slice(8, 12) + "-" + h.slice(12, 16) + "-" + h.slice(16, 20) + "-" + h.slice(20);
  }

  // ---- DOM, built with createElement/textContent only --------------------------------------

  function el(tag, part, style, text) {
    var node = document.createElement(tag);
    if (part) {
      node.setAttribute("data-part", part);
    }
    if (style) {
      Object.assign(node.style, style);
    }
    if (text !== undefined && text !== null) {
      node.textContent = text;
    }
    return node;
  }

  var font = { fontFamily: "system-ui, sans-serif", fontSize: "14px", lineHeight: "1.4" };
  var host = el("div", null, { position: "fixed", right: "16px", bottom: "16px", zIndex: "2147483000" });
  var root = host.attachShadow ? host.attachShadow({ mode: "open" }) : host;
  var launcher = el("button", "launcher", Object.assign({
    border: "0", borderRadius: "24px", padding: "12px 18px", background: "#1f6feb", color: "#fff", cursor: "pointer"
  }, font), "Chat with us");
  launcher.type = "button";
  var panel = el("div", "panel", Object.assign({
    display: "none", flexDirection: "column", width: "320px", height: "440px", background: "#fff",
    border: "1px solid #d0d7de", borderRadius: "8px", boxShadow: "0 4px 16px rgba(0,0,0,.2)", marginBottom: "8px",
    overflow: "hidden", color: "#1f2328"
  }, font));
  var header = el("div", "greeting", { padding: "10px 12px", background: "#1f6feb", color: "#fff" }, "Chat with us");
  var offline = el("div", "offline", { display: "none", padding: "8px 12px", background: "#fff8c5" });
  var offlineText = el("div", "offline-text");
  var offlineForm = el("form", "offline-form", { display: "flex", gap: "4px", marginTop: "6px" });
  var offlineEmail = el("input", "offline-email", { flex: "1", minWidth: "0" });
  offlineEmail.type = "email";
  offlineEmail.required = true;
  offlineEmail.placeholder = "you@example.com";
  offlineEmail.setAttribute("aria-label", "Your email");
  var offlineSubmit = el("button", "offline-submit", null, "Send");
  offlineSubmit.type = "submit";
  offlineForm.appendChild(offlineEmail);
  offlineForm.appendChild(offlineSubmit);
  var offlineThanks = el("div", "offline-thanks", { display: "none", marginTop: "6px" }, "Thanks! We'll reply to your email.");
  offline.appendChild(offlineText);
  offline.appendChild(offlineForm);
  offline.appendChild(offlineThanks);

  var prechat = el("form", "prechat", { display: "none", flexDirection: "column", gap: "6px", padding: "12px" });
  var prechatIntro = el("div", null, null, "Before we start, how can we reach you?");
  var prechatName = el("input", "prechat-name");
  prechatName.placeholder = "Your name";
  prechatName.setAttribute("aria-label", "Your name");
  prechatName.required = true;
  var prechatEmail = el("input", "prechat-email");
  prechatEmail.type = "email";
  prechatEmail.placeholder = "you@example.com";
  prechatEmail.setAttribute("aria-label", "Your email");
  prechatEmail.required = true;
  var prechatSubmit = el("button", "prechat-submit", null, "Start chat");
  prechatSubmit.type = "submit";
  [prechatIntro, prechatName, prechatEmail, prechatSubmit].forEach(function (n) { prechat.appendChild(n); });

  var log = el("div", "log", { flex: "1", overflowY: "auto", padding: "8px 12px", display: "flex", flexDirection: "column", gap: "6px" });
  var typing = el("div", "typing", { display: "none", padding: "0 12px 4px", color: "#59636e", fontStyle: "italic" }, "Agent is typing…");
  var error = el("div", "error", { display: "none", padding: "4px 12px", color: "#cf222e" });
  error.setAttribute("role", "alert");
  var composer = el("form", "composer", { display: "flex", gap: "4px", padding: "8px", borderTop: "1px solid #d0d7de" });
  var input = el("input", "input", { flex: "1", minWidth: "0" });
  input.placeholder = "Type a message…";
  input.setAttribute("aria-label", "Message");
  input.maxLength = 5000;
  var file = el("input", "file", { display: "none" });
  file.type = "file";
  var attach = el("button", "attach", null, "Attach");
  attach.type = "button";
  attach.setAttribute("aria-label", "Attach a file");
  var send = el("button", "send", null, "Send");
  send.type = "submit";
  [input, file, attach, send].forEach(function (n) { composer.appendChild(n); });
  // Consent: the visitor can decline marketing messages (recorded on their contact, audited).
  var privacy = el("div", "privacy", { padding: "2px 12px 6px", fontSize: "12px", color: "#59636e" });
  var noMarketing = el("button", "no-marketing", { background: "none", border: "0", padding: "0", color: "inherit", textDecoration: "underline", cursor: "pointer", font: "inherit" }, "Stop marketing messages");
  noMarketing.type = "button";
  var noMarketingDone = el("span", "no-marketing-done", { display: "none" }, "You will not receive marketing messages.");
  privacy.appendChild(noMarketing);
  privacy.appendChild(noMarketingDone);
  [header, offline, prechat, log, typing, error, composer, privacy].forEach(function (n) { panel.appendChild(n); });
  root.appendChild(panel);
  root.appendChild(launcher);

  function show(node, visible, display) {
    node.style.display = visible ? (display || "block") : "none";
  }

  function isOpen() {
    return panel.style.display !== "none";
  }

  function showError(text) {
    error.textContent = text || "";
    show(error, !!text);
  }

  function scrollDown() {
    log.scrollTop = log.scrollHeight;
  }

  function safeUrl(url) {
    try {
      var parsed = new URL(url, httpBase);
      return parsed.protocol === "https:" || parsed.protocol === "http:" ? parsed.href : null;
    } catch (e) {
      return null;
    }
  }

  function render(message) {
    var node = (message.id && byId[message.id]) || (message.client_id && byClientId[message.client_id]);
    if (!node) {
      node = el("div", "message", { maxWidth: "80%", padding: "6px 10px", borderRadius: "10px", whiteSpace: "pre-wrap", wordBreak: "break-word" });
      log.appendChild(node);
    }
    var outbound = message.direction === "outbound";
    node.setAttribute("data-direction", message.direction);
    Object.assign(node.style, outbound
      ? { alignSelf: "flex-start", background: "#f6f8fa" }
      : { alignSelf: "flex-end", background: "#ddf4ff" });
    node.textContent = "";
    if (message.text) {
      node.appendChild(el("div", "text", null, message.text));
    }
    (message.attachments || []).forEach(function (a) {
      var name = a.filename || "attachment";
      var href = a.url && safeUrl(a.url);
      var link;
      if (href) {
        link = el("a", "attachment", { display: "block" }, name);
        link.href = href;
        link.target = "_blank";
        link.rel = "noopener noreferrer";
      } else {
        link = el("span", "attachment", { display: "block" }, name + " (not available)");
      }
      node.appendChild(link);
    });
    (message.buttons || []).forEach(function (b) {
      var button = el("button", "choice", { display: "block", marginTop: "4px" }, b.title);
      button.type = "button";
      button.addEventListener("click", function () { say(b.title, b.id); });
      node.appendChild(button);
    });
    if (message.id) {
      node.setAttribute("data-id", String(message.id));
      byId[message.id] = node;
      lastId = Math.max(lastId, message.id);
    }
    if (message.client_id) {
      byClientId[message.client_id] = node;
    }
    node.setAttribute("data-pending", message.id ? "false" : "true");
    if (outbound) {
      show(typing, false);
      if (message.status === "read" || message.status === "delivered") {
        acked[message.id] = message.status;
      }
      acknowledge(message.id);
    }
    scrollDown();
  }

  function acknowledge(id) {
    if (!id) {
      return;
    }
    var wanted = isOpen() && document.visibilityState === "visible" ? "read" : "delivered";
    if (acked[id] === wanted || acked[id] === "read") {
      return;
    }
    if (transmit({ type: "ack", message_id: id, status: wanted })) {
      acked[id] = wanted;
    }
  }

  function acknowledgeAll() {
    Object.keys(byId).forEach(function (id) {
      if (byId[id].getAttribute("data-direction") === "outbound") {
        acknowledge(Number(id));
      }
    });
  }

  // ---- The socket ---------------------------------------------------------------------------

  function transmit(frame) {
    if (!ready || !socket || socket.readyState !== WebSocket.OPEN) {
      return false;
    }
    socket.send(JSON.stringify(frame));
    return true;
  }

  function say(text, buttonId) {
    text = (text || "").trim();
    if (!text) {
      return;
    }
    var id = newId();
    var frame = { type: "message", id: id, text: text };
    if (buttonId) {
      frame.button_id = buttonId;
    }
    pending[id] = frame;
    render({ client_id: id, direction: "inbound", text: text });
    setTyping(false);
    transmit(frame);
  }

  function setTyping(on) {
    if (typingTimer) {
      clearTimeout(typingTimer);
      typingTimer = null;
    }
    if (on) {
      typingTimer = setTimeout(function () { setTyping(false); }, 3000);
    }
    if (on !== typingSent && transmit({ type: "typing", typing: on })) {
      typingSent = on;
    }
  }

  function applyWelcome(frame) {
    saved.token = frame.token;
    save();
    settings = frame;
    header.textContent = frame.greeting || "Chat with us";
    offlineText.textContent = frame.offline_text || "";
    var needPrechat = frame.pre_chat_form && !saved.contactGiven;
    show(prechat, needPrechat, "flex");
    show(composer, !needPrechat, "flex");
    applyPresence(frame.agents_online);
  }

  function applyPresence(online) {
    show(offline, !online);
    show(offlineForm, !online && !saved.emailGiven, "flex");
    show(offlineThanks, !online && !!saved.emailGiven);
  }

  function receive(frame) {
    switch (frame.type) {
      case "welcome":
        retries = 0;
        ready = true;
        showError("");
        applyWelcome(frame);
        Object.keys(pending).forEach(function (id) { transmit(pending[id]); });
        break;
      case "history":
        frame.messages.forEach(render);
        break;
      case "message":
        render(frame.message);
        break;
      case "accepted":
        delete pending[frame.id];
        break;
      case "typing":
        show(typing, frame.typing);
        if (agentTypingTimer) {
          clearTimeout(agentTypingTimer);
        }
        if (frame.typing) {
          agentTypingTimer = setTimeout(function () { show(typing, false); }, 8000);
        }
        break;
      case "presence":
        applyPresence(frame.agents_online);
        break;
      case "contact_saved":
        break;
      case "consent_saved":
        saved.marketingDeclined = !frame.granted;
        save();
        showMarketingChoice();
        break;
      case "error":
        showError(frame.message);
        break;
    }
  }

  function connect() {
    if (stopped) {
      return;
    }
    ready = false;
    socket = new WebSocket(wsUrl);
    socket.addEventListener("open", function () {
      socket.send(JSON.stringify({
        type: "hello",
        token: saved.token || null,
        identifier: identifier || null,
        identifier_hash: identifierHash || null,
        since: lastId
      }));
    });
    socket.addEventListener("message", function (event) {
      var frame;
      try {
        frame = JSON.parse(event.data);
      } catch (e) {
        return;
      }
      receive(frame);
    });
    socket.addEventListener("close", function (event) {
      ready = false;
      typingSent = false;
      if (event.code === 4401) {
        // The session expired or is not ours: start a new one.
        delete saved.token;
        save();
        setTimeout(connect, 200);
        return;
      }
      if (event.code === 4403 || event.code === 4400) {
        stopped = true;
        return;
      }
      if (event.code === 1009) {
        showError("That message is too large to send.");
      }
      retries += 1;
      setTimeout(connect, Math.min(30000, 500 * Math.pow(2, Math.min(retries, 6))));
    });
  }

  // ---- Events -------------------------------------------------------------------------------

  launcher.addEventListener("click", function () {
    show(panel, !isOpen(), "flex");
    if (isOpen()) {
      acknowledgeAll();
      scrollDown();
    }
  });
  document.addEventListener("visibilitychange", acknowledgeAll);

  composer.addEventListener("submit", function (event) {
    event.preventDefault();
    say(input.value);
    input.value = "";
  });
  input.addEventListener("input", function () {
    setTyping(input.value.length > 0);
  });

  function showMarketingChoice() {
    show(noMarketing, !saved.marketingDeclined, "inline");
    show(noMarketingDone, !!saved.marketingDeclined, "inline");
  }
  showMarketingChoice();
  noMarketing.addEventListener("click", function () {
    if (!transmit({ type: "consent", purpose: "marketing", granted: false })) {
      showError("Not connected yet; try again in a moment.");
    }
  });

  function giveContact(name, email, done) {
    if (transmit({ type: "contact", name: name || null, email: email || null })) {
      saved.contactGiven = true;
      if (email) {
        saved.emailGiven = true;
      }
      save();
      done();
    } else {
      showError("Not connected yet; try again in a moment.");
    }
  }

  prechat.addEventListener("submit", function (event) {
    event.preventDefault();
    giveContact(prechatName.value.trim(), prechatEmail.value.trim(), function () {
      show(prechat, false);
      show(composer, true, "flex");
      show(offlineForm, false);
      input.focus();
    });
  });
  offlineForm.addEventListener("submit", function (event) {
    event.preventDefault();
    giveContact(null, offlineEmail.value.trim(), function () {
      show(offlineForm, false);
      show(offlineThanks, true);
    });
  });

  attach.addEventListener("click", function () { file.click(); });
  file.addEventListener("change", function () {
    var chosen = file.files && file.files[0];
    file.value = "";
    if (!chosen) {
      return;
    }
    if (chosen.size > settings.max_upload_bytes) {
      showError("That file is too large: the limit is " + Math.floor(settings.max_upload_bytes / 1024) + " KB.");
      return;
    }
    if (!saved.token) {
      showError("Not connected yet; try again in a moment.");
      return;
    }
    var form = new FormData();
    form.append("token", saved.token);
    form.append("id", newId());
    form.append("text", "");
    form.append("file", chosen, chosen.name);
    showError("");
    fetch(uploadUrl, { method: "POST", body: form, credentials: "omit" })
      .then(function (response) {
        return response.json().then(function (body) {
          if (!response.ok) {
            throw new Error((body && body.error && body.error.message) || "The upload failed.");
          }
          render(body.message);
        });
      })
      .catch(function (e) { showError(e.message || "The upload failed."); });
  });

  function start() {
    document.body.appendChild(host);
    connect();
  }
  if (document.body) {
    start();
  } else {
    document.addEventListener("DOMContentLoaded", start);
  }
})();
