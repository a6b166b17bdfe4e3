// Keyboard shortcuts of the review pages. Loaded from this app's origin only (the CSP forbids inline script).
(function () {
  "use strict";
  var page = document.body.getAttribute("data-page");
  var help = document.getElementById("help");
  var helpToggle = document.getElementById("help-toggle");

  function toggleHelp() { help.hidden = !help.hidden; }
  if (helpToggle) { helpToggle.hidden = false; helpToggle.addEventListener("click", toggleHelp); }

  function click(id) { var el = document.getElementById(id); if (el) { el.click(); return true; } return false; }
  function go(id) { var el = document.getElementById(id); if (el) { window.location.href = el.href; return true; } return false; }

  // The queue: j/k move a selection over the rows, Enter opens it; a click on a row opens it too.
  var rows = Array.prototype.slice.call(document.querySelectorAll("#queue tr.row"));
  var selected = -1;
  function select(i) {
    if (!rows.length) { return; }
    if (selected >= 0) { rows[selected].classList.remove("selected"); }
    selected = Math.max(0, Math.min(rows.length - 1, i));
    rows[selected].classList.add("selected");
    rows[selected].scrollIntoView({ block: "nearest" });
  }
  rows.forEach(function (row) {
    row.addEventListener("click", function (ev) {
      if (ev.target.tagName !== "A") { window.location.href = row.getAttribute("data-href"); }
    });
  });

  var editPanel = document.getElementById("edit-panel");
  var editAnswer = document.getElementById("edit-answer");
  var note = document.getElementById("note");

  document.addEventListener("keydown", function (ev) {
    if (ev.altKey || ev.metaKey) { return; }
    var t = ev.target;
    var typing = t && (t.tagName === "TEXTAREA" || t.tagName === "INPUT" || t.tagName === "SELECT");
    if (typing) {
      if (ev.key === "Escape") { t.blur(); }
      if (ev.key === "Enter" && ev.ctrlKey && t === editAnswer) { ev.preventDefault(); click("save-edit"); }
      return;
    }
    if (ev.ctrlKey) { return; }
    var done = false;
    if (ev.key === "?") { toggleHelp(); done = true; }
    else if (page === "queue") {
      if (ev.key === "j") { select(selected + 1); done = true; }
      else if (ev.key === "k") { select(selected - 1); done = true; }
      else if (ev.key === "Enter" && selected >= 0) { window.location.href = rows[selected].getAttribute("data-href"); done = true; }
    } else if (page === "item") {
      if (ev.key === "j") { done = go("next"); }
      else if (ev.key === "k") { done = go("prev"); }
      else if (ev.key === "a") { done = click("approve"); }
      else if (ev.key === "r") { done = click("reject"); }
      else if (ev.key === "c") { done = click("cannot-tell"); }
      else if (ev.key === "n" && note) { note.focus(); done = true; }
      else if (ev.key === "e" && editPanel) { editPanel.open = true; editAnswer.focus(); done = true; }
    }
    if (done) { ev.preventDefault(); }
  });
})();
