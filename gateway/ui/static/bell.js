// The notifications bell (templates/inbox/_bell.html): the unread count from
// GET /api/v1/notifications, the list from /ui/notifications when opened, marked read when
// followed, and kept current by live.js's `notification.*` events.
(function () {
  "use strict";
  if (window.parley && window.parley.bell) { return; }

  function Bell(root) {
    this.root = root;
    this.button = root.querySelector("[data-bell-button]");
    this.count = root.querySelector("[data-bell-count]");
    this.panel = root.querySelector("[data-bell-panel]");
    this.open = false;
    const self = this;
    this.button.addEventListener("click", function () { self.toggle(); });
    document.addEventListener("click", function (event) {
      if (self.open && !root.contains(event.target)) { self.close(); }
    });
    root.addEventListener("keydown", function (event) {
      if (event.key === "Escape" && self.open) { self.close(); self.button.focus(); }
    });
    this.panel.addEventListener("click", function (event) { self.onPanelClick(event); });
    document.addEventListener("parley:event", function (event) {
      const detail = event.detail || {};
      if (detail.topic === "notification.created" || detail.topic === "notification.read") {
        self.refresh();
      }
    });
    document.addEventListener("parley:reconnected", function () { self.refresh(); });
    this.refresh();
  }

  Bell.prototype.setCount = function (unread) {
    this.count.textContent = unread > 99 ? "99+" : String(unread);
    this.count.classList.toggle("hidden", unread === 0);
    this.root.dataset.unread = String(unread);
    this.button.setAttribute("aria-label", unread ? "Notifications, " + unread + " unread" : "Notifications");
  };

  Bell.prototype.refresh = async function () {
    try {
      const page = await window.parley.api("GET", "/api/v1/notifications?limit=1");
      this.setCount(page.unread_count);
    } catch (e) { return; }
    if (this.open) { await this.load(); }
  };

  // Never throws: a fetch cut short (the page navigating away, the network gone) just leaves the list.
  Bell.prototype.load = async function () {
    let response;
    try {
      response = await fetch("/ui/notifications", { credentials: "same-origin", headers: { "HX-Request": "true" } });
    } catch (e) { return; }
    if (!response.ok) { return; }
    // Server-rendered with autoescaping: names and note text arrive as text, never markup.
    let html;
    try { html = await response.text(); } catch (e) { return; }
    this.panel.innerHTML = html;
    const list = this.panel.querySelector("[data-unread-count]");
    if (list) { this.setCount(parseInt(list.dataset.unreadCount, 10) || 0); }
  };

  Bell.prototype.toggle = async function () {
    if (this.open) { this.close(); return; }
    this.open = true;
    this.panel.classList.remove("hidden");
    this.button.setAttribute("aria-expanded", "true");
    await this.load();
    const first = this.panel.querySelector("a, button");
    if (first) { first.focus(); }
  };

  Bell.prototype.close = function () {
    this.open = false;
    this.panel.classList.add("hidden");
    this.button.setAttribute("aria-expanded", "false");
  };

  Bell.prototype.onPanelClick = async function (event) {
    const readAll = event.target.closest("[data-bell-read-all]");
    if (readAll) {
      event.preventDefault();
      try { await window.parley.api("POST", "/api/v1/notifications/read-all"); } catch (e) { return; }
      await this.load();
      return;
    }
    const link = event.target.closest("a[data-notification-id]");
    if (!link || link.dataset.unread !== "true") { return; }
    event.preventDefault();
    try {
      await window.parley.api("POST", "/api/v1/notifications/" + link.dataset.notificationId + "/read");
    } catch (e) { /* still go there: it stays unread */ }
    window.location.assign(link.getAttribute("href"));
  };

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-bell]").forEach(function (root) { root.bell = new Bell(root); });
  });
  window.parley = window.parley || {};
  window.parley.bell = true;
})();
