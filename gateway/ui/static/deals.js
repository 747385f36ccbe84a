// The deals board: drag a card to another column or place, the drop is sent to
// POST /api/v1/deals/{id}/move, and the board is read again. The form on each card does the same
// without a mouse. No inline script (CSP): everything is wired here by delegation.
(function () {
  "use strict";
  let dragged = null;

  function status(text) {
    const box = document.getElementById("board-status");
    if (box) box.textContent = text;
  }

  function refresh() {
    const board = document.getElementById("board");
    const query = board ? board.dataset.query : "";
    return htmx.ajax("GET", "/deals" + (query ? "?" + query : ""), { target: "#board", swap: "outerHTML" });
  }

  // Where among the column's other cards the pointer is: the index to insert at.
  function dropIndex(list, y) {
    const others = Array.from(list.querySelectorAll(".deal-card")).filter(function (c) { return c !== dragged; });
    for (let i = 0; i < others.length; i++) {
      const box = others[i].getBoundingClientRect();
      if (y < box.top + box.height / 2) return i;
    }
    return others.length;
  }

  function clearTargets() {
    document.querySelectorAll(".cards.drop-target").forEach(function (l) { l.classList.remove("drop-target"); });
  }

  document.addEventListener("dragstart", function (event) {
    const card = event.target.closest ? event.target.closest('.deal-card[draggable="true"]') : null;
    if (!card) return;
    dragged = card;
    event.dataTransfer.effectAllowed = "move";
    event.dataTransfer.setData("text/plain", card.dataset.dealId);
    card.classList.add("dragging");
  });

  document.addEventListener("dragend", function () {
    if (dragged) dragged.classList.remove("dragging");
    dragged = null;
    clearTargets();
  });

  document.addEventListener("dragover", function (event) {
    const list = event.target.closest ? event.target.closest(".cards") : null;
    if (!list || !dragged) return;
    event.preventDefault();
    event.dataTransfer.dropEffect = "move";
    if (!list.classList.contains("drop-target")) {
      clearTargets();
      list.classList.add("drop-target");
    }
  });

  document.addEventListener("drop", function (event) {
    const list = event.target.closest ? event.target.closest(".cards") : null;
    if (!list || !dragged) return;
    event.preventDefault();
    const id = dragged.dataset.dealId;
    const body = { stage_id: Number(list.dataset.stageId), position: dropIndex(list, event.clientY) };
    clearTargets();
    status("");
    window.parley.api("POST", "/api/v1/deals/" + id + "/move", body).then(refresh, function (error) {
      status("The deal could not be moved: " + error.message);
      refresh();
    });
  });

  // The pipeline and owner selects show their board at once.
  document.addEventListener("change", function (event) {
    const select = event.target;
    if (select.matches && select.matches(".board-filters select")) select.form.requestSubmit();
  });
})();
