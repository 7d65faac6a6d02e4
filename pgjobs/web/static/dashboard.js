// pgjobs dashboard: live refresh of the overview, and a confirmation before destructive actions.
// Served as a file of its own: the Content-Security-Policy allows no inline script.
"use strict";

document.addEventListener("submit", (event) => {
  const button = event.submitter;
  const question = button && button.dataset.confirm;
  if (question && !window.confirm(question)) event.preventDefault();
});

const live = document.querySelector("[data-live]");
if (live) {
  const refresh = async () => {
    if (document.hidden) return;
    try {
      const response = await fetch(live.dataset.live, { credentials: "same-origin" });
      if (response.redirected) {
        window.location.assign(response.url); // signed out: the whole page goes to sign in
        return;
      }
      if (response.ok) {
        live.innerHTML = await response.text(); // the server's own escaped HTML
        live.classList.remove("stale");
      } else {
        live.classList.add("stale");
      }
    } catch (error) {
      live.classList.add("stale");
    }
  };
  window.setInterval(refresh, 3000);
}
