// The Webhooks admin screen: creating a subscription shows its signing secret once, here,
// instead of reloading (the API never shows it again).
(function () {
  "use strict";

  async function create(event) {
    const form = event.target.closest("#new-webhook");
    if (!form) return;
    event.preventDefault();
    event.stopImmediatePropagation();
    const error = form.querySelector("[data-form-error]");
    error.classList.add("hidden");
    const types = Array.from(form.querySelectorAll("input[name=event_types]:checked")).map(function (b) { return b.value; });
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      const created = await window.parley.api("POST", "/api/v1/webhooks", {
        url: form.elements.namedItem("url").value.trim(),
        description: form.elements.namedItem("description").value.trim(),
        event_types: types,
      });
      document.getElementById("webhook-secret-value").textContent = created.secret;
      document.getElementById("webhook-secret-link").href = "/admin/webhooks/" + created.id;
      document.getElementById("webhook-secret").classList.remove("hidden");
      form.classList.add("hidden");
    } catch (e) {
      const details = e.data && e.data.error && e.data.error.details;
      error.textContent = details && details.length ? details.map(function (d) { return d.message; }).join("; ") : e.message;
      error.classList.remove("hidden");
      button.disabled = false;
    }
  }

  // Capture phase: before admin.js's generic form handler.
  document.addEventListener("submit", create, true);
})();
