// The inbox page: opening conversations, keyboard shortcuts, search, live refreshes, email frames.
// The server renders every pane; this file only asks htmx for fresh panes and wires keys to buttons.
// Customer text is only ever put into the page as text (textContent), never as HTML.
(function () {
  "use strict";
  if (!document.getElementById("inbox")) return;
  const csrf = window.parley ? window.parley.csrf : "";
  // htmx's history restore replaces the page's body: elements are looked up each time, never kept.
  function byId(id) { return document.getElementById(id); }
  function inboxEl() { return byId("inbox") || document.createElement("div"); }

  function openId() {
    const id = inboxEl().dataset.openId;
    return id ? Number(id) : null;
  }

  function debounce(fn, ms) {
    let timer = null;
    return function () {
      clearTimeout(timer);
      timer = setTimeout(fn, ms);
    };
  }

  // --- panes -------------------------------------------------------------------------------------

  function markActiveRow() {
    const id = openId();
    document.querySelectorAll("#rows .row").forEach(function (row) {
      const active = Number(row.dataset.conversationId) === id;
      row.classList.toggle("active", active);
      const link = row.querySelector(".row-link");
      if (link) {
        if (active) link.setAttribute("aria-current", "true");
        else link.removeAttribute("aria-current");
      }
    });
  }

  function highlightHash() {
    const match = /^#m(\d+)$/.exec(window.location.hash);
    if (!match) return false;
    const target = document.getElementById("m" + match[1]);
    if (!target) return false;
    document.querySelectorAll(".msg.highlight").forEach(function (el) { el.classList.remove("highlight"); });
    target.classList.add("highlight");
    target.scrollIntoView({ block: "center" });
    return true;
  }

  function scrollToEnd() {
    const list = document.getElementById("messages");
    if (list) list.scrollTop = list.scrollHeight;
  }

  async function markRead(id, refresh) {
    const response = await fetch("/inbox/c/" + id + "/read", {
      method: "POST", headers: { "X-CSRF-Token": csrf }, credentials: "same-origin",
    });
    if (response.ok && refresh) refreshList();
  }

  // The conversation this page last marked read on opening: an action re-rendering the same thread
  // (mark unread above all) must not mark it read again.
  let readOnOpen = null;

  function threadOpened() {
    const wrap = document.querySelector("#thread .thread-wrap");
    const id = wrap ? Number(wrap.dataset.conversationId) : null;
    inboxEl().dataset.openId = id ? String(id) : "";
    inboxEl().classList.toggle("thread-open", Boolean(id));
    markActiveRow();
    if (!highlightHash()) scrollToEnd();
    if (id && id !== readOnOpen) {
      readOnOpen = id;
      const row = document.querySelector('#rows .row[data-conversation-id="' + id + '"]');
      markRead(id, Boolean(row && row.classList.contains("unread")));
    }
  }

  function listIsBusy() {
    const focused = document.activeElement;
    return Boolean(focused && focused.closest("#list") && focused.tagName === "SELECT");
  }

  const refreshList = debounce(function () {
    if (listIsBusy()) {
      refreshList();
      return;
    }
    const rows = document.getElementById("rows");
    const scroll = rows ? rows.scrollTop : 0;
    htmx.ajax("GET", window.location.pathname + window.location.search, { target: "#list", swap: "innerHTML" })
      .then(function () {
        const fresh = document.getElementById("rows");
        if (fresh) fresh.scrollTop = scroll;
        markActiveRow();
      });
  }, 250);

  function nearBottom() {
    const list = document.getElementById("messages");
    return !list || list.scrollHeight - list.scrollTop - list.clientHeight < 80;
  }

  const refreshMessages = debounce(function () {
    const id = openId();
    if (!id || !document.getElementById("messages")) return;
    const stick = nearBottom();
    htmx.ajax("GET", "/inbox/c/" + id, { target: "#messages", swap: "innerHTML" }).then(function () {
      if (stick) scrollToEnd();
    });
  }, 200);

  const refreshHead = debounce(function () {
    const id = openId();
    const head = document.getElementById("thread-head");
    if (!id || !head) return;
    // An agent in the middle of using a menu keeps it: the head is refreshed when they are done.
    if (headInUse(head)) {
      refreshHead();
      return;
    }
    htmx.ajax("GET", "/inbox/c/" + id, { target: "#thread-head", swap: "innerHTML" });
  }, 300);

  document.body.addEventListener("htmx:configRequest", function (event) {
    // Tabs and filters keep the open conversation in the URL: the list changes, the thread stays.
    const source = event.detail.elt;
    if (source && source.closest && source.closest("[data-list-link]") && openId()) {
      event.detail.path = event.detail.path.replace(/^\/inbox(?=$|\?)/, "/inbox/c/" + openId());
    }
  });

  function headInUse(head) {
    return Boolean(head.querySelector("details[open]") || head.contains(document.activeElement));
  }

  document.body.addEventListener("htmx:beforeSwap", function (event) {
    // A live refresh of the head that comes back while the agent has opened a menu waits for later.
    if (event.detail.target && event.detail.target.id === "thread-head" && headInUse(event.detail.target)) {
      event.detail.shouldSwap = false;
      refreshHead();
      return;
    }
    // Refused actions answer with the thread pane explaining why: show it.
    const status = event.detail.xhr ? event.detail.xhr.status : 0;
    if ([403, 404, 409, 422].indexOf(status) >= 0 && event.detail.target && event.detail.target.id === "thread") {
      event.detail.shouldSwap = true;
      event.detail.isError = false;
    }
  });

  document.body.addEventListener("htmx:afterSwap", function (event) {
    const target = event.detail.target;
    if (!target) return;
    if (target.id === "thread") threadOpened();
    if (target.id === "list") markActiveRow();
  });

  document.body.addEventListener("parley:list-stale", function () { refreshList(); });

  document.addEventListener("click", function (event) {
    const link = event.target.closest("[data-open-conversation]");
    if (link) {
      inboxEl().dataset.openId = link.dataset.openConversation;
      markActiveRow();
      return;
    }
    const back = event.target.closest("[data-back]");
    if (back && window.matchMedia("(max-width: 700px)").matches) {
      event.preventDefault();
      inboxEl().classList.remove("thread-open");
      history.pushState({}, "", "/inbox" + window.location.search);
      return;
    }
    const images = event.target.closest("[data-show-images]");
    if (images) {
      const frame = document.querySelector('iframe[data-email-frame="' + images.dataset.showImages + '"]');
      if (frame) frame.src = "/ui/messages/" + images.dataset.showImages + "/email?images=1";
      images.hidden = true;
      return;
    }
    if (event.target.closest("[data-shortcuts-open]")) showShortcuts(true);
    if (event.target.closest("[data-shortcuts-close]")) showShortcuts(false);
  });

  window.addEventListener("hashchange", highlightHash);

  // An action form submitted in the instant after htmx swapped it in, before htmx took it over,
  // would navigate away as a plain form: send it the way htmx would have.
  function postForm(form) {
    htmx.ajax("POST", form.getAttribute("hx-post"), { source: form, target: form.getAttribute("hx-target") || "#thread" });
  }

  document.addEventListener("submit", function (event) {
    const form = event.target;
    if (event.defaultPrevented || !form.matches || !form.matches("form[hx-post]")) return;
    event.preventDefault();
    postForm(form);
  });

  // --- transcript (the composer's API) ------------------------------------------------------------

  function say(text, isError) {
    const status = document.getElementById("action-status");
    if (!status) return;
    status.textContent = "";
    const p = document.createElement("p");
    p.className = isError ? "error" : "notice";
    if (isError) p.setAttribute("role", "alert");
    p.textContent = text;
    status.appendChild(p);
  }

  document.addEventListener("submit", async function (event) {
    const form = event.target.closest("[data-transcript]");
    if (!form) return;
    event.preventDefault();
    const email = form.elements.email.value.trim();
    try {
      await window.parley.api("POST", "/api/v1/conversations/" + form.dataset.transcript + "/transcript", { email: email });
      say("Transcript sent to " + email + ".", false);
      const menu = form.closest("details");
      if (menu) menu.open = false;
    } catch (error) {
      say("The transcript was not sent: " + error.message, true);
    }
  });

  // --- search -------------------------------------------------------------------------------------

  function searchBoxEl() { return byId("inbox-search"); }
  function resultsEl() { return byId("search-results") || document.createElement("div"); }

  function highlighted(text, ranges) {
    // Offsets are in code points: split the text the same way, then wrap matches in <mark> as text.
    const chars = Array.from(text || "");
    const fragment = document.createDocumentFragment();
    let at = 0;
    (ranges || []).forEach(function (range) {
      const start = Math.max(range[0], at);
      const end = Math.min(range[1], chars.length);
      if (end <= start) return;
      fragment.appendChild(document.createTextNode(chars.slice(at, start).join("")));
      const mark = document.createElement("mark");
      mark.textContent = chars.slice(start, end).join("");
      fragment.appendChild(mark);
      at = end;
    });
    fragment.appendChild(document.createTextNode(chars.slice(at).join("")));
    return fragment;
  }

  function resultLink(href, main, meta) {
    const a = document.createElement("a");
    a.href = href;
    a.appendChild(main);
    const small = document.createElement("span");
    small.className = "meta";
    small.textContent = meta;
    a.appendChild(small);
    return a;
  }

  function closeResults() {
    const results = resultsEl();
    results.hidden = true;
    results.textContent = "";
  }

  const runSearch = debounce(async function () {
    const searchBox = searchBoxEl();
    const results = resultsEl();
    if (!searchBox) return;
    const q = searchBox.value.trim();
    if (q.length < 2) {
      closeResults();
      return;
    }
    let found;
    try {
      found = await window.parley.api("GET", "/api/v1/search?kind=all&limit=8&q=" + encodeURIComponent(q));
    } catch (error) {
      results.textContent = "";
      const p = document.createElement("p");
      p.textContent = error.status === 422 ? "Type a word or a number." : "Search failed: " + error.message;
      results.appendChild(p);
      results.hidden = false;
      return;
    }
    if (searchBox.value.trim() !== q) return; // typed on meanwhile
    results.textContent = "";
    if (found.messages && found.messages.length) {
      const h = document.createElement("h3");
      h.textContent = "Messages";
      results.appendChild(h);
      found.messages.forEach(function (m) {
        const when = new Date(m.created_at).toLocaleString();
        results.appendChild(resultLink(
          "/inbox/c/" + m.conversation_id + "?at=" + m.message_id + "#m" + m.message_id,
          highlighted(m.snippet, m.highlights),
          (m.contact_name || "Contact #" + m.contact_id) + " · " + m.inbox_name + " · " + when
        ));
      });
    }
    if (found.contacts && found.contacts.length) {
      const h = document.createElement("h3");
      h.textContent = "Contacts";
      results.appendChild(h);
      found.contacts.forEach(function (c) {
        const name = document.createElement("span");
        name.textContent = c.name || c.email || c.phone || "Contact #" + c.contact_id;
        results.appendChild(resultLink(
          "/inbox?view=all&status=&contact_id=" + c.contact_id,
          name,
          c.matched_field + ": " + c.matched_value
        ));
      });
    }
    if (!results.children.length) {
      const p = document.createElement("p");
      p.textContent = "Nothing found.";
      results.appendChild(p);
    }
    results.hidden = false;
  }, 250);

  document.addEventListener("input", function (event) {
    if (event.target.id === "inbox-search") runSearch();
  });
  document.addEventListener("keydown", function (event) {
    const searchBox = searchBoxEl();
    const results = resultsEl();
    if (event.target === searchBox) {
      if (event.key === "ArrowDown") {
        const first = results.querySelector("a");
        if (first) {
          event.preventDefault();
          first.focus();
        }
      } else if (event.key === "Escape") {
        closeResults();
      }
    } else if (results.contains(event.target)) {
      const links = Array.from(results.querySelectorAll("a"));
      const i = links.indexOf(document.activeElement);
      if (event.key === "ArrowDown" && i < links.length - 1) { event.preventDefault(); links[i + 1].focus(); }
      if (event.key === "ArrowUp") { event.preventDefault(); (i > 0 ? links[i - 1] : searchBox).focus(); }
      if (event.key === "Escape") { closeResults(); searchBox.focus(); }
    }
  });
  document.addEventListener("click", function (event) {
    if (!event.target.closest(".search")) closeResults();
  });

  // --- keyboard -----------------------------------------------------------------------------------

  function showShortcuts(show) {
    const shortcuts = byId("shortcuts");
    if (!shortcuts) return;
    shortcuts.hidden = !show;
    if (show) shortcuts.querySelector("button").focus();
  }

  function typing(target) {
    if (!target || !target.closest) return false;
    return Boolean(target.closest("input, textarea, select, [contenteditable=''], [contenteditable='true']"));
  }

  function move(step) {
    const links = Array.from(document.querySelectorAll("#rows .row-link"));
    if (!links.length) return;
    const current = links.findIndex(function (link) { return Number(link.dataset.openConversation) === openId(); });
    const next = current < 0 ? 0 : Math.min(Math.max(current + step, 0), links.length - 1);
    if (next === current) return;
    links[next].scrollIntoView({ block: "nearest" });
    links[next].focus();
    links[next].click();
  }

  document.addEventListener("keydown", function (event) {
    if (event.ctrlKey || event.metaKey || event.altKey || event.defaultPrevented) return;
    const shortcuts = byId("shortcuts");
    const searchBox = searchBoxEl();
    if (event.key === "Escape" && shortcuts && !shortcuts.hidden) {
      showShortcuts(false);
      return;
    }
    if (typing(event.target)) return;
    switch (event.key) {
      case "j": move(1); break;
      case "k": move(-1); break;
      case "e": {
        const resolve = document.querySelector('#thread [data-shortcut="resolve"]');
        if (resolve) postForm(resolve.form);
        break;
      }
      case "a": {
        const assign = document.querySelector('#thread [data-shortcut="assign"]');
        if (assign) { event.preventDefault(); assign.focus(); }
        break;
      }
      case "/":
        if (searchBox) { event.preventDefault(); searchBox.focus(); searchBox.select(); }
        break;
      case "?":
        showShortcuts(shortcuts ? shortcuts.hidden : false);
        break;
      default:
        return;
    }
  });

  // --- live updates (live.js dispatches parley:event) ---------------------------------------------

  let typingTimer = null;

  function showTyping(payload) {
    const line = document.getElementById("typing");
    if (!line) return;
    clearTimeout(typingTimer);
    if (payload.typing === false) {
      line.classList.add("hidden");
      return;
    }
    const by = payload.by && payload.by.type === "contact" ? "The customer" : (payload.by && payload.by.name) || "Someone";
    line.textContent = by + " is typing…";
    line.classList.remove("hidden");
    typingTimer = setTimeout(function () { line.classList.add("hidden"); }, 8000);
  }

  document.addEventListener("parley:event", function (event) {
    const detail = event.detail || {};
    const topic = String(detail.topic || "");
    const payload = detail.payload || {};
    const mine = payload.conversation_id !== undefined && Number(payload.conversation_id) === openId();
    if (topic === "conversation.typing") {
      if (mine) showTyping(payload);
      return;
    }
    if (topic.indexOf("message.") === 0 || topic === "note.created") {
      if (mine) {
        refreshMessages();
        if (topic === "message.received") {
          showTyping({ typing: false });
          if (document.visibilityState === "visible") markRead(openId(), true);
        }
      }
      if (topic !== "message.updated") refreshList();
      return;
    }
    if (topic === "agent.presence_changed") {
      refreshHead(); // who is online, in the assign menu
      return;
    }
    if (topic.indexOf("conversation.") === 0) {
      refreshList();
      if (mine && topic !== "conversation.read") {
        refreshHead();
        if (payload.changes && payload.changes.merged_into_id) refreshMessages();
      }
    }
  });

  function refreshAll() {
    refreshList();
    refreshMessages();
    refreshHead();
  }
  document.addEventListener("parley:reconnected", refreshAll);
  document.addEventListener("parley:resync", refreshAll);

  // The composer (composer.js) sent a reply or a note: show it now, before its event comes round.
  document.addEventListener("parley:composer-sent", function (event) {
    const detail = event.detail || {};
    if (Number(detail.conversation_id) === openId()) refreshMessages();
    refreshList();
  });

  // --- first load ---------------------------------------------------------------------------------

  if (openId()) threadOpened();
  // Back/forward: htmx put the page of that URL back; mark what it shows.
  document.body.addEventListener("htmx:historyRestore", function () {
    if (openId()) threadOpened();
    else markActiveRow();
  });
})();
