// The admin screens' forms: each submits to the documented REST API (/api/v1) through
// window.parley.api, and shows the API's refusal next to the field it names.
//
//   <form data-api="PATCH /api/v1/users/7" data-then="reload" data-success="Saved.">
//     <input name="name">                          → {"name": "..."}
//     <input name="settings.account_sid">           → {"settings": {"account_sid": "..."}}
//     <input name="ring_timeout" data-type="int">   (also list, json, kv "skill:level, ...", bool)
//     <input name="x" data-empty="null">            an empty field sends null (default: left out)
//   data-api may name fields in its path: "PUT /api/v1/teams/3/members/{user_id}".
//   data-then: "reload" (default) or "redirect:/admin/inboxes/{id}?created=1" ({id} of the answer).
//   data-confirm: a question asked first (deleting).
(function () {
  "use strict";

  class FieldError extends Error {
    constructor(element, message) { super(message); this.element = element; }
  }

  function setPath(target, path, value) {
    const parts = path.split(".");
    let node = target;
    for (let i = 0; i < parts.length - 1; i++) {
      if (typeof node[parts[i]] !== "object" || node[parts[i]] === null) node[parts[i]] = {};
      node = node[parts[i]];
    }
    node[parts[parts.length - 1]] = value;
  }

  function valueOf(element) {
    const type = element.dataset.type || "text";
    const empty = element.dataset.empty || "omit";
    if (element.type === "checkbox") return { value: element.checked };
    const raw = element.value.trim();
    if (raw === "") {
      if (empty === "null") return { value: null };
      if (empty === "blank") return { value: type === "list" ? [] : type === "kv" || type === "json" ? {} : "" };
      return { skip: true };
    }
    if (type === "int") {
      const number = Number(raw);
      if (!Number.isInteger(number)) throw new FieldError(element, "must be a whole number");
      return { value: number };
    }
    if (type === "list") return { value: raw.split(/[\n,]/).map(function (s) { return s.trim(); }).filter(Boolean) };
    if (type === "json") {
      try { return { value: JSON.parse(raw) }; } catch (e) { throw new FieldError(element, "is not valid JSON"); }
    }
    if (type === "kv") {
      const out = {};
      raw.split(/[\n,]/).forEach(function (part) {
        const item = part.trim();
        if (!item) return;
        const pieces = item.split(":");
        const level = Number((pieces[1] || "").trim());
        if (pieces.length !== 2 || !pieces[0].trim() || !Number.isInteger(level)) {
          throw new FieldError(element, "use name:level, e.g. billing:5");
        }
        out[pieces[0].trim()] = level;
      });
      return { value: out };
    }
    if (type === "bool") return { value: raw === "true" || raw === "yes" };
    return { value: raw };
  }

  function clearErrors(form) {
    form.querySelectorAll(".field-error[data-generated]").forEach(function (e) { e.remove(); });
    form.querySelectorAll("[aria-invalid]").forEach(function (e) { e.removeAttribute("aria-invalid"); });
    const general = form.querySelector("[data-form-error]");
    if (general) { general.textContent = ""; general.classList.add("hidden"); }
  }

  function showFieldError(form, element, message) {
    const note = document.createElement("p");
    note.className = "field-error";
    note.dataset.generated = "1";
    note.setAttribute("role", "alert");
    note.id = (element.id || element.name.replace(/\W/g, "-")) + "-error";
    note.textContent = message;
    element.setAttribute("aria-invalid", "true");
    element.setAttribute("aria-describedby", note.id);
    element.insertAdjacentElement("afterend", note);
  }

  function showFormError(form, message) {
    let general = form.querySelector("[data-form-error]");
    if (!general) {
      general = document.createElement("p");
      general.className = "error";
      general.setAttribute("role", "alert");
      general.dataset.formError = "1";
      form.prepend(general);
    }
    general.textContent = message;
    general.classList.remove("hidden");
  }

  // "body.settings.account_sid" → the input named "settings.account_sid", or the nearest named ancestor path.
  function fieldFor(form, location) {
    const parts = location.split(".");
    if (parts[0] === "body") parts.shift();
    while (parts.length) {
      const found = form.elements.namedItem(parts.join("."));
      const element = found && found.length !== undefined && !found.tagName ? found[0] : found;
      if (element) return element;
      parts.pop();
    }
    return null;
  }

  function showApiError(form, error) {
    const details = error.data && error.data.error && error.data.error.details;
    let placed = false;
    if (details && details.length) {
      details.forEach(function (detail) {
        const element = fieldFor(form, detail.field || "");
        if (element) { showFieldError(form, element, detail.message); placed = true; }
      });
    }
    if (!placed) showFormError(form, error.message);
  }

  function build(form) {
    const [method, template] = form.dataset.api.split(" ");
    const used = new Set();
    const path = template.replace(/\{(\w+)\}/g, function (_, name) {
      used.add(name);
      const element = form.elements.namedItem(name);
      return encodeURIComponent(element ? element.value : "");
    });
    const body = {};
    let hasBody = false;
    Array.from(form.elements).forEach(function (element) {
      if (!element.name || element.name === "csrf_token" || used.has(element.name) || element.disabled) return;
      if (element.dataset.ignore !== undefined) return;
      const result = valueOf(element);
      if (result.skip) return;
      setPath(body, element.name, result.value);
      hasBody = true;
    });
    return { method: method, path: path, body: hasBody || method === "POST" || method === "PATCH" ? body : undefined };
  }

  async function submit(event) {
    const form = event.target.closest("form[data-api]");
    if (!form) return;
    event.preventDefault();
    if (form.dataset.confirm && !window.confirm(form.dataset.confirm)) return;
    clearErrors(form);
    let request;
    try {
      request = build(form);
    } catch (error) {
      if (error instanceof FieldError) { showFieldError(form, error.element, error.message); return; }
      throw error;
    }
    const buttons = form.querySelectorAll("button[type=submit]");
    buttons.forEach(function (b) { b.disabled = true; });
    try {
      const answer = await window.parley.api(request.method, request.path, request.body);
      if (form.dataset.success) window.sessionStorage.setItem("parley.flash", form.dataset.success);
      const then = form.dataset.then || "reload";
      if (then.indexOf("redirect:") === 0) {
        window.location.assign(then.slice(9).replace("{id}", answer && answer.id !== undefined ? answer.id : ""));
      } else {
        window.location.reload();
      }
    } catch (error) {
      showApiError(form, error);
      buttons.forEach(function (b) { b.disabled = false; });
    }
  }

  function flash() {
    const message = window.sessionStorage.getItem("parley.flash");
    const target = document.getElementById("admin-flash");
    if (!message || !target) return;
    window.sessionStorage.removeItem("parley.flash");
    target.textContent = message;
    target.classList.remove("hidden");
  }

  // A channel picked on the new-inbox page loads that channel's fields.
  function channelPicker() {
    const picker = document.getElementById("new-inbox-channel");
    if (!picker) return;
    picker.addEventListener("change", function () {
      window.location.assign("/admin/inboxes/new?channel=" + encodeURIComponent(picker.value));
    });
  }

  // Copy buttons next to the webhook URLs.
  document.addEventListener("click", function (event) {
    const button = event.target.closest("button[data-copy]");
    if (!button) return;
    const source = document.getElementById(button.dataset.copy);
    if (!source || !navigator.clipboard) return;
    navigator.clipboard.writeText(source.textContent.trim()).then(function () {
      button.textContent = "Copied";
    });
  });

  document.addEventListener("submit", submit);
  document.addEventListener("DOMContentLoaded", function () { flash(); channelPicker(); });
})();
