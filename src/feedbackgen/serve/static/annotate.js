// Keyboard shortcuts for the annotation form: a / t / b pick the preference. The form itself is a
// plain HTML form, so judging works without this file.
"use strict";

const form = document.getElementById("judge-form");
if (form) {
  document.addEventListener("keydown", (e) => {
    if (e.target.matches("input[type=text], input:not([type]), textarea") || e.ctrlKey || e.metaKey || e.altKey) return;
    const value = { a: "A", t: "tie", b: "B" }[e.key.toLowerCase()];
    if (value) form.querySelector(`input[name=preference][value=${value}]`).checked = true;
  });
}
