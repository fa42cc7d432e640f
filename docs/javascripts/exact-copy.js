// Copy buttons copy a code block exactly as the file the tests ran, final
// newline included. Material's own copy trims it, and Caddy then warns at
// every start that a Caddyfile copied from this site "is not formatted".
// This runs after Material's handler, in the same click, and writes the
// block's whole text over what it copied.
document.addEventListener("click", (event) => {
  const button = event.target.closest("button[data-md-type='copy']");
  const code = button && document.querySelector(button.dataset.clipboardTarget);
  if (!code) return;
  const shown = code.cloneNode(true);
  shown.querySelectorAll(".md-annotation").forEach((marker) => marker.remove());
  navigator.clipboard.writeText(shown.textContent);
});
