// The composer under an open conversation (templates/inbox/_composer.html).
// Replies and notes go through the REST API (window.parley.api from app.js), so the page meets the
// same checks as any client: WhatsApp's 24-hour window, opt-outs, voice lines. A failed send keeps
// the text. The draft lives in sessionStorage per conversation, so a live refresh of the thread, a
// swap of the composer or a reload never loses it.
// Keys: Ctrl/Cmd+Enter sends, Enter is a new line; "/" at the start opens canned responses,
// "@" in a note opens the workspace's people; arrows + Enter (or Tab) pick, Escape closes.
(function () {
  "use strict";
  if (window.parley && window.parley.composer) { return; } // loaded twice: once is enough

  const DRAFT_PREFIX = "parley:draft:";
  const MAX_SUGGESTIONS = 8;

  function draftKey(id) { return DRAFT_PREFIX + id; }

  function loadDraft(id) {
    try {
      const raw = window.sessionStorage.getItem(draftKey(id));
      const draft = raw ? JSON.parse(raw) : null;
      if (draft && typeof draft === "object") {
        return { reply: String(draft.reply || ""), note: String(draft.note || ""), mode: draft.mode, files: Array.isArray(draft.files) ? draft.files : [] };
      }
    } catch (e) { /* storage off or corrupt: start empty */ }
    return { reply: "", note: "", mode: null, files: [] };
  }

  function saveDraft(id, draft) {
    try {
      if (!draft.reply && !draft.note && !draft.files.length) {
        window.sessionStorage.removeItem(draftKey(id));
      } else {
        window.sessionStorage.setItem(draftKey(id), JSON.stringify(draft));
      }
    } catch (e) { /* storage full or off: the box still holds the text */ }
  }

  function errorMessage(error) {
    if (error && error.data && error.data.error) {
      const details = error.data.error.details;
      if (Array.isArray(details) && details.length && details[0].message) {
        return error.data.error.message + " " + details.map(function (d) { return d.message; }).join("; ");
      }
      return error.data.error.message;
    }
    return (error && error.message) || "Something went wrong; your text is still here.";
  }

  function formatLeft(seconds) {
    if (seconds <= 0) { return "now"; }
    const hours = Math.floor(seconds / 3600);
    const minutes = Math.floor((seconds % 3600) / 60);
    return hours ? hours + " h " + minutes + " min" : minutes + " min";
  }

  function Composer(root) {
    this.root = root;
    this.id = root.dataset.conversationId;
    this.canReply = root.dataset.canReply === "true";
    this.templateMode = root.dataset.templateMode === "true";
    this.media = root.dataset.media === "true";
    this.maxBytes = parseInt(root.dataset.maxBytes || "0", 10);
    this.form = root.querySelector("[data-composer-form]");
    this.text = root.querySelector("[data-composer-text]");
    this.list = root.querySelector("[data-composer-suggestions]");
    this.filesList = root.querySelector("[data-composer-files]");
    this.fileInput = root.querySelector("[data-composer-file]");
    this.templateForm = root.querySelector("[data-composer-template-form]");
    this.status = root.querySelector("[data-composer-status]");
    this.sendButton = root.querySelector("[data-composer-send]");
    this.suggest = null; // {kind: "canned"|"mention", start, items, active}
    this.people = null;
    this.sending = false;
    this.draft = loadDraft(this.id);
    this.mode = this.draft.mode || root.dataset.mode || "reply";
    if (!this.form) { return; } // read-only role
    this.text.value = this.draft[this.mode] || "";
    this.renderFiles();
    this.bind();
    this.setMode(this.mode);
    this.startCountdown();
  }

  Composer.prototype.bind = function () {
    const self = this;
    this.root.querySelectorAll("[data-composer-mode]").forEach(function (tab) {
      tab.addEventListener("click", function () { self.setMode(tab.dataset.composerMode); self.text.focus(); });
    });
    this.text.addEventListener("input", function () { self.remember(); self.updateSuggestions(); self.typing(true); });
    this.text.addEventListener("keydown", function (event) { self.onKey(event); });
    this.text.addEventListener("blur", function () { window.setTimeout(function () { self.closeSuggestions(); }, 150); });
    this.form.addEventListener("submit", function (event) { event.preventDefault(); self.send(); });
    if (this.fileInput) {
      this.fileInput.addEventListener("change", function () {
        self.upload(Array.from(self.fileInput.files || []));
        self.fileInput.value = "";
      });
    }
    this.form.addEventListener("dragover", function (event) {
      if (event.dataTransfer && Array.from(event.dataTransfer.types || []).indexOf("Files") >= 0) {
        event.preventDefault();
        self.form.classList.add("dragging");
      }
    });
    this.form.addEventListener("dragleave", function () { self.form.classList.remove("dragging"); });
    this.form.addEventListener("drop", function (event) {
      if (!event.dataTransfer || !event.dataTransfer.files.length) { return; }
      event.preventDefault();
      self.form.classList.remove("dragging");
      self.upload(Array.from(event.dataTransfer.files));
    });
    if (this.templateForm) {
      const select = this.templateForm.querySelector("[data-composer-template-select]");
      if (select) {
        select.addEventListener("change", function () { self.showTemplate(); });
        this.templateForm.addEventListener("input", function () { self.previewTemplate(); });
        this.showTemplate();
      }
      this.templateForm.addEventListener("submit", function (event) { event.preventDefault(); self.sendTemplate(); });
      this.templateForm.addEventListener("keydown", function (event) {
        if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) { event.preventDefault(); self.sendTemplate(); }
      });
    }
  };

  // Other agents (and a web chat visitor) see "typing…" through live.js's socket (it throttles).
  Composer.prototype.typing = function (on) {
    const live = window.parley && window.parley.live;
    if (!live || typeof live.typing !== "function") { return; }
    if (on && this.mode !== "reply") { return; }
    try { live.typing(Number(this.id), on); } catch (e) { /* offline: nothing to tell */ }
  };

  Composer.prototype.remember = function () {
    this.draft[this.mode] = this.text.value;
    this.draft.mode = this.mode;
    saveDraft(this.id, this.draft);
  };

  Composer.prototype.setMode = function (mode) {
    if (mode !== "note" && mode !== "reply") { mode = "reply"; }
    if (this.mode !== mode) {
      this.draft[this.mode] = this.text.value;
      this.text.value = this.draft[mode] || "";
    }
    this.mode = mode;
    this.draft.mode = mode;
    saveDraft(this.id, this.draft);
    this.closeSuggestions();
    const note = mode === "note";
    this.root.dataset.mode = mode;
    this.root.classList.toggle("note-mode", note);
    this.root.querySelectorAll("[data-composer-mode]").forEach(function (tab) {
      tab.setAttribute("aria-selected", tab.dataset.composerMode === mode ? "true" : "false");
    });
    const templates = !note && this.templateMode;
    if (this.templateForm) { this.templateForm.classList.toggle("hidden", !templates); }
    this.form.classList.toggle("hidden", templates);
    this.root.querySelectorAll("[data-composer-reply-only]").forEach(function (el) { el.classList.toggle("hidden", note); });
    const blocked = !note && !this.canReply;
    this.text.disabled = blocked;
    this.sendButton.disabled = blocked;
    this.sendButton.textContent = note ? "Add note" : "Send";
    this.text.placeholder = note
      ? "Private note: only agents see it. @name to mention someone. Ctrl+Enter to add."
      : "Reply… (/ for canned responses, Ctrl+Enter to send)";
    const label = this.root.querySelector("[data-composer-label]");
    if (label) { label.textContent = note ? "Private note" : "Reply"; }
    this.renderFiles();
    this.setError("");
  };

  Composer.prototype.setError = function (message) {
    this.root.querySelectorAll("[data-composer-error]").forEach(function (el) { el.textContent = message; });
  };

  Composer.prototype.setStatus = function (message) {
    if (this.status) { this.status.textContent = message; }
  };

  // --- sending ---------------------------------------------------------------------------------

  Composer.prototype.onKey = function (event) {
    if (this.suggest && this.suggest.items.length) {
      if (event.key === "ArrowDown" || event.key === "ArrowUp") {
        event.preventDefault();
        const n = this.suggest.items.length;
        this.suggest.active = (this.suggest.active + (event.key === "ArrowDown" ? 1 : n - 1)) % n;
        this.renderSuggestions();
        return;
      }
      if ((event.key === "Enter" && !event.ctrlKey && !event.metaKey) || event.key === "Tab") {
        event.preventDefault();
        this.pick(this.suggest.active);
        return;
      }
      if (event.key === "Escape") {
        event.preventDefault();
        this.closeSuggestions();
        return;
      }
    }
    if (event.key === "Enter" && (event.ctrlKey || event.metaKey)) {
      event.preventDefault();
      this.send();
    }
  };

  Composer.prototype.send = async function () {
    if (this.sending) { return; }
    const body = this.text.value;
    const note = this.mode === "note";
    const files = note ? [] : this.draft.files;
    if (!body.trim() && !files.length) {
      this.setError(note ? "Write the note first." : "Write a reply or attach a file first.");
      return;
    }
    if (!note && !this.canReply) { return; }
    this.sending = true;
    this.sendButton.disabled = true;
    this.setError("");
    this.setStatus(note ? "Adding…" : "Sending…");
    try {
      let message;
      if (note) {
        message = await window.parley.api("POST", "/api/v1/conversations/" + this.id + "/notes", { body: body });
      } else {
        message = await window.parley.api("POST", "/api/v1/conversations/" + this.id + "/messages", {
          body: body,
          attachments: files.map(function (f) { return { url: f.url, content_type: f.content_type }; })
        });
      }
      if (!note) { this.typing(false); }
      this.text.value = "";
      this.draft[this.mode] = "";
      if (!note) { this.draft.files = []; }
      saveDraft(this.id, this.draft);
      this.renderFiles();
      this.setStatus(note ? "Note added" + (message.notified_user_ids && message.notified_user_ids.length ? ", " + message.notified_user_ids.length + " notified" : "") : "Sent");
      document.dispatchEvent(new CustomEvent("parley:composer-sent", { detail: { conversation_id: Number(this.id), message: message, note: note } }));
    } catch (error) {
      this.setStatus("");
      this.setError(errorMessage(error));
      if (error && error.data && error.data.error && error.data.error.code === "outside_reply_window") {
        // The window closed while the agent wrote: offer the templates, keep the text in the draft.
        this.refresh("The 24-hour window closed while you wrote; your text is kept. Send a template, or wait for the customer to write.");
      }
    } finally {
      this.sending = false;
      this.sendButton.disabled = !note && !this.canReply;
      this.text.focus();
    }
  };

  // --- templates (WhatsApp outside its 24-hour window) -----------------------------------------

  Composer.prototype.currentTemplate = function () {
    const select = this.templateForm.querySelector("[data-composer-template-select]");
    if (!select) { return null; }
    return this.templateForm.querySelector('[data-template-index="' + select.value + '"]');
  };

  Composer.prototype.showTemplate = function () {
    const current = this.currentTemplate();
    this.templateForm.querySelectorAll("[data-template-index]").forEach(function (fieldset) {
      const shown = fieldset === current;
      fieldset.classList.toggle("hidden", !shown);
      fieldset.querySelectorAll("input").forEach(function (input) { input.disabled = !shown; });
    });
    this.previewTemplate();
  };

  Composer.prototype.filledTemplate = function (fieldset) {
    let text = fieldset.dataset.body || "";
    const variables = {};
    fieldset.querySelectorAll("[data-variable]").forEach(function (input) {
      variables[input.dataset.variable] = input.value;
      text = text.split("{{" + input.dataset.variable + "}}").join(input.value);
    });
    return { text: text, variables: variables };
  };

  Composer.prototype.previewTemplate = function () {
    const current = this.currentTemplate();
    if (!current) { return; }
    const preview = current.querySelector("[data-template-preview]");
    if (preview) { preview.textContent = this.filledTemplate(current).text; }
  };

  Composer.prototype.sendTemplate = async function () {
    const select = this.templateForm.querySelector("[data-composer-template-select]");
    const current = this.currentTemplate();
    if (!select || !current || this.sending) { return; }
    const missing = Array.from(current.querySelectorAll("[data-variable]")).filter(function (i) { return !i.value.trim(); });
    if (missing.length) {
      this.setError("Fill in every variable of the template.");
      missing[0].focus();
      return;
    }
    const option = select.options[select.selectedIndex];
    const filled = this.filledTemplate(current);
    const button = this.templateForm.querySelector('button[type="submit"]');
    this.sending = true;
    button.disabled = true;
    this.setError("");
    try {
      const message = await window.parley.api("POST", "/api/v1/conversations/" + this.id + "/messages", {
        body: filled.text,
        template: { name: option.dataset.name, language: option.dataset.language || null, variables: filled.variables }
      });
      this.setStatus("Template sent");
      const status = this.templateForm.querySelector("[data-composer-error]");
      if (status) { status.textContent = ""; }
      this.templateForm.classList.add("sent");
      document.dispatchEvent(new CustomEvent("parley:composer-sent", { detail: { conversation_id: Number(this.id), message: message, template: true } }));
    } catch (error) {
      this.setError(errorMessage(error));
    } finally {
      this.sending = false;
      button.disabled = false;
    }
  };

  // --- the reply window ------------------------------------------------------------------------

  Composer.prototype.startCountdown = function () {
    const self = this;
    const clock = this.root.querySelector("[data-composer-countdown]");
    const closesAt = this.root.dataset.closesAt ? Date.parse(this.root.dataset.closesAt) : NaN;
    if (!clock || isNaN(closesAt)) { return; }
    const tick = function () {
      if (!self.root.isConnected) { window.clearInterval(timer); return; }
      const left = Math.floor((closesAt - Date.now()) / 1000);
      clock.textContent = formatLeft(left);
      if (left <= 0) { window.clearInterval(timer); self.refresh(); }
    };
    const timer = window.setInterval(tick, 30000);
    tick();
  };

  // The conversation's reply options changed (the window closed or reopened): swap in a fresh
  // composer; the draft comes back from sessionStorage.
  Composer.prototype.refresh = async function (message) {
    this.remember();
    let html;
    try {
      const response = await fetch("/ui/conversations/" + this.id + "/composer", { credentials: "same-origin", headers: { "HX-Request": "true" } });
      if (!response.ok) { return; }
      html = await response.text();
    } catch (e) { return; } // offline or leaving: the next event or reconnect tries again
    const holder = document.createElement("div");
    holder.innerHTML = html;
    const fresh = holder.querySelector("[data-composer]");
    if (!fresh || !this.root.parentNode) { return; }
    this.root.replaceWith(fresh);
    init(fresh);
    if (message && fresh.composer) { fresh.composer.setError(message); }
  };

  Composer.prototype.checkOptions = async function () {
    try {
      const options = await window.parley.api("GET", "/api/v1/conversations/" + this.id + "/reply-options");
      const templateMode = options.reason_code === "outside_reply_window";
      if (options.can_reply !== this.canReply || templateMode !== this.templateMode) { await this.refresh(); }
    } catch (e) { /* the next event tries again */ }
  };

  // --- attachments -----------------------------------------------------------------------------

  Composer.prototype.upload = async function (files) {
    if (!files.length) { return; }
    if (this.mode === "note") {
      this.setError("Notes carry text only; switch to Reply to attach files.");
      return;
    }
    if (!this.media) {
      this.setError(this.root.dataset.channel + " cannot carry files: send a link in the text instead.");
      return;
    }
    for (const file of files) {
      if (this.maxBytes && file.size > this.maxBytes) {
        this.setError(file.name + " is larger than the " + Math.floor(this.maxBytes / 1048576 * 10) / 10 + " MB limit.");
        continue;
      }
      const data = new FormData();
      data.append("file", file, file.name);
      this.setStatus("Uploading " + file.name + "…");
      try {
        const response = await fetch("/ui/conversations/" + this.id + "/uploads", {
          method: "POST", body: data, credentials: "same-origin",
          headers: { "X-CSRF-Token": window.parley.csrf, "Accept": "application/json" }
        });
        const result = await response.json().catch(function () { return null; });
        if (!response.ok) {
          this.setError(result && result.error ? result.error.message : "The upload failed (" + response.status + ").");
          continue;
        }
        this.draft.files.push({ url: result.url, content_type: result.content_type, filename: result.filename, size: result.size });
        saveDraft(this.id, this.draft);
        this.renderFiles();
        this.setError("");
      } catch (error) {
        this.setError("The upload failed: " + error.message);
      } finally {
        this.setStatus("");
      }
    }
  };

  Composer.prototype.renderFiles = function () {
    if (!this.filesList) { return; }
    const self = this;
    this.filesList.textContent = "";
    const shown = this.mode === "note" ? [] : this.draft.files;
    shown.forEach(function (file, index) {
      const item = document.createElement("li");
      item.className = "composer-file";
      const name = document.createElement("span");
      name.textContent = (file.filename || "file") + " · " + (file.content_type || "");
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "link";
      remove.textContent = "×";
      remove.setAttribute("aria-label", "Remove " + (file.filename || "file"));
      remove.addEventListener("click", function () {
        self.draft.files.splice(index, 1);
        saveDraft(self.id, self.draft);
        self.renderFiles();
      });
      item.appendChild(name);
      item.appendChild(remove);
      self.filesList.appendChild(item);
    });
  };

  // --- suggestions: canned responses and @mentions ---------------------------------------------

  Composer.prototype.updateSuggestions = async function () {
    const before = this.text.value.slice(0, this.text.selectionStart);
    const canned = this.mode === "reply" && /^\/([\w-]*)$/.exec(before);
    const mention = this.mode === "note" && /(^|[^\w.+-])@([\w.+-]*)$/.exec(before);
    if (canned) {
      const q = canned[1];
      const token = (this.lookup = {});
      try {
        const page = await window.parley.api("GET", "/api/v1/canned-responses?limit=" + MAX_SUGGESTIONS + "&q=" + encodeURIComponent(q));
        if (this.lookup !== token) { return; }
        this.openSuggestions("canned", 0, page.data.map(function (c) {
          return { id: c.id, label: "/" + c.short_code, hint: c.title };
        }));
      } catch (e) { this.closeSuggestions(); }
    } else if (mention) {
      const q = mention[2].toLowerCase();
      const start = before.length - mention[2].length - 1;
      const token = (this.lookup = {});
      try {
        if (this.people === null) {
          const response = await fetch("/ui/composer/people", { credentials: "same-origin", headers: { "Accept": "application/json" } });
          this.people = response.ok ? (await response.json()).data : [];
        }
        if (this.lookup !== token) { return; }
        const found = this.people.filter(function (p) {
          return !q || p.handle.indexOf(q) === 0 || p.name.toLowerCase().split(/\s+/).some(function (w) { return w.indexOf(q) === 0; });
        }).slice(0, MAX_SUGGESTIONS);
        this.openSuggestions("mention", start, found.map(function (p) {
          return { id: p.id, label: "@" + p.handle, hint: p.name + (p.me ? " (you)" : ""), handle: p.handle };
        }));
      } catch (e) { this.closeSuggestions(); }
    } else {
      this.closeSuggestions();
    }
  };

  Composer.prototype.openSuggestions = function (kind, start, items) {
    if (!items.length) { this.closeSuggestions(); return; }
    this.suggest = { kind: kind, start: start, items: items, active: 0 };
    this.renderSuggestions();
  };

  Composer.prototype.renderSuggestions = function () {
    const self = this;
    const s = this.suggest;
    this.list.textContent = "";
    s.items.forEach(function (item, index) {
      const option = document.createElement("li");
      option.id = "composer-suggestion-" + index;
      option.setAttribute("role", "option");
      option.setAttribute("aria-selected", index === s.active ? "true" : "false");
      option.className = "composer-suggestion";
      const label = document.createElement("span");
      label.className = "composer-suggestion-label";
      label.textContent = item.label;
      const hint = document.createElement("span");
      hint.className = "composer-suggestion-hint";
      hint.textContent = item.hint;
      option.appendChild(label);
      option.appendChild(hint);
      option.addEventListener("mousedown", function (event) { event.preventDefault(); self.pick(index); });
      self.list.appendChild(option);
    });
    this.list.setAttribute("aria-label", s.kind === "canned" ? "Canned responses" : "People to mention");
    this.list.classList.remove("hidden");
    this.text.setAttribute("aria-expanded", "true");
    this.text.setAttribute("aria-activedescendant", "composer-suggestion-" + s.active);
  };

  Composer.prototype.closeSuggestions = function () {
    this.suggest = null;
    this.lookup = null;
    if (!this.list) { return; }
    this.list.classList.add("hidden");
    this.list.textContent = "";
    this.text.setAttribute("aria-expanded", "false");
    this.text.removeAttribute("aria-activedescendant");
  };

  Composer.prototype.pick = async function (index) {
    const s = this.suggest;
    if (!s) { return; }
    const item = s.items[index];
    const caret = this.text.selectionStart;
    this.closeSuggestions();
    if (s.kind === "mention") {
      const value = this.text.value;
      const insert = "@" + item.handle + " ";
      this.text.value = value.slice(0, s.start) + insert + value.slice(caret);
      const at = s.start + insert.length;
      this.text.setSelectionRange(at, at);
      this.remember();
      return;
    }
    try {
      const rendered = await window.parley.api("POST", "/api/v1/conversations/" + this.id + "/canned-responses/" + item.id + "/render");
      const value = this.text.value;
      this.text.value = rendered.text + value.slice(caret);
      this.text.setSelectionRange(rendered.text.length, rendered.text.length);
      this.remember();
      this.setError("");
    } catch (error) {
      this.setError(errorMessage(error));
    }
    this.text.focus();
  };

  // --- wiring ----------------------------------------------------------------------------------

  function init(root) {
    if (!root || root.dataset.composerReady) { return; }
    root.dataset.composerReady = "true";
    root.composer = new Composer(root);
  }

  function initAll(scope) {
    (scope || document).querySelectorAll("[data-composer]").forEach(init);
  }

  document.addEventListener("DOMContentLoaded", function () { initAll(document); });
  // Threads opened by htmx bring their composer with them.
  document.addEventListener("htmx:load", function (event) {
    const el = event.detail && event.detail.elt;
    if (el && el.matches && el.matches("[data-composer]")) { init(el); } else if (el && el.querySelectorAll) { initAll(el); }
  });
  // Live events (live.js): a customer's message may reopen WhatsApp's window; after a reconnect
  // anything may have changed.
  document.addEventListener("parley:event", function (event) {
    const detail = event.detail || {};
    const payload = detail.payload || {};
    if (detail.topic !== "message.received" && detail.topic !== "conversation.updated") { return; }
    document.querySelectorAll("[data-composer]").forEach(function (root) {
      if (root.composer && String(payload.conversation_id) === root.dataset.conversationId) { root.composer.checkOptions(); }
    });
  });
  document.addEventListener("parley:reconnected", function () {
    document.querySelectorAll("[data-composer]").forEach(function (root) { if (root.composer) { root.composer.checkOptions(); } });
  });

  window.parley = window.parley || {};
  window.parley.composer = { init: initAll };
})();
