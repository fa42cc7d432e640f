// On a phone, a table inside <div class="cards-on-phone"> shows each row as a
// card (docs/stylesheets/extra.css); each cell then needs its column's name
// beside it, which CSS can only show from an attribute of the cell.
function labelCells() {
  document.querySelectorAll(".cards-on-phone table").forEach((table) => {
    const names = [...table.querySelectorAll("thead th")].map((th) =>
      th.innerText.replace(/\s+/g, " ").trim(),
    );
    table.querySelectorAll("tbody tr").forEach((row) => {
      [...row.cells].forEach((cell, i) => {
        if (names[i]) cell.dataset.label = names[i];
      });
    });
  });
}
if (typeof document$ !== "undefined") {
  document$.subscribe(labelCells); // Material's page-load signal
} else {
  document.addEventListener("DOMContentLoaded", labelCells);
}
