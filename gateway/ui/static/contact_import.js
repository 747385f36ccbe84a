// The contact import page: upload → column mapping → progress, all through /api/v1/contacts/imports.
// Column names and values come from the customer's file: they are only ever set as text.
(function () {
  "use strict";

  let current = null;

  function showError(form, message) {
    const box = form.querySelector("[data-import-error]");
    box.textContent = message;
    box.classList.remove("hidden");
  }

  function option(value, label, selected) {
    const o = document.createElement("option");
    o.value = value;
    o.textContent = label;
    o.selected = selected;
    return o;
  }

  function showMapping(preview) {
    current = preview;
    const body = document.getElementById("import-columns");
    body.replaceChildren();
    preview.header.forEach(function (column, i) {
      if (!column) return;
      const row = document.createElement("tr");
      const name = document.createElement("td");
      name.textContent = column;
      const sample = document.createElement("td");
      sample.textContent = preview.rows.length ? (preview.rows[0][i] || "") : "";
      const pick = document.createElement("td");
      const select = document.createElement("select");
      select.dataset.column = column;
      select.setAttribute("aria-label", "Import " + column + " as");
      const suggested = preview.suggested_mapping[column] || "ignore";
      select.appendChild(option("ignore", "(ignore)", suggested === "ignore"));
      preview.fields.forEach(function (field) { select.appendChild(option(field, field.replace("_", " "), field === suggested)); });
      pick.appendChild(select);
      row.append(name, sample, pick);
      body.appendChild(row);
    });
    document.getElementById("import-summary").textContent =
      preview.total_rows + " rows, separated by " + (preview.delimiter === "\t" ? "tabs" : "“" + preview.delimiter + "”") + ", read as " + preview.encoding + ".";
    document.getElementById("import-upload").classList.add("hidden");
    document.getElementById("import-mapping").classList.remove("hidden");
  }

  function showProgress(job) {
    const status = document.getElementById("import-status");
    status.textContent = job.status === "done"
      ? "Done: " + job.created_count + " created, " + job.updated_count + " updated, " + job.error_count + " rows refused."
      : job.status === "failed"
        ? "The import failed after " + job.processed_rows + " rows; those are imported."
        : "Importing… " + job.processed_rows + " of " + job.total_rows + " rows.";
    status.dataset.status = job.status;
    if (job.status === "done" && job.error_count) {
      const link = document.getElementById("import-errors");
      link.href = "/api/v1/contacts/imports/" + job.id + "/errors.csv";
      link.classList.remove("hidden");
    }
    if (job.status !== "done" && job.status !== "failed") {
      window.setTimeout(function () { poll(job.id); }, 1000);
    }
  }

  async function poll(id) {
    showProgress(await window.parley.api("GET", "/api/v1/contacts/imports/" + id));
  }

  async function upload(event) {
    event.preventDefault();
    const form = event.target;
    const file = form.elements.namedItem("file").files[0];
    if (!file) return;
    const data = new FormData();
    data.append("file", file, file.name);
    const response = await fetch("/api/v1/contacts/imports", {
      method: "POST", body: data, credentials: "same-origin",
      headers: { "X-CSRF-Token": window.parley.csrf, "Accept": "application/json" },
    });
    const answer = await response.json();
    if (!response.ok) { showError(form, answer.error ? answer.error.message : response.statusText); return; }
    showMapping(answer);
  }

  async function start(event) {
    event.preventDefault();
    const form = event.target;
    const mapping = {};
    form.querySelectorAll("select[data-column]").forEach(function (s) {
      if (s.value !== "ignore") mapping[s.dataset.column] = s.value;
    });
    try {
      const job = await window.parley.api("POST", "/api/v1/contacts/imports/" + current.id + "/start", { mapping: mapping });
      form.classList.add("hidden");
      document.getElementById("import-result").classList.remove("hidden");
      showProgress(job);
    } catch (e) {
      const details = e.data && e.data.error && e.data.error.details;
      showError(form, details && details.length ? details.map(function (d) { return d.message; }).join("; ") : e.message);
    }
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.getElementById("import-upload").addEventListener("submit", upload);
    document.getElementById("import-mapping").addEventListener("submit", start);
  });
})();
