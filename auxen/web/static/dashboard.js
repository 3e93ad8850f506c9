// The dashboard's only script (a static file, so the page's CSP needs no 'unsafe-inline').
// Everything works without it; it adds a copy button for a new key and keeps the
// instances table's states current by polling a same-origin JSON endpoint.
"use strict";

function setUpCopyButtons() {
  for (const button of document.querySelectorAll("button[data-copy]")) {
    const field = document.getElementById(button.dataset.copy);
    const said = button.parentElement.querySelector(".copied");
    if (!field || !navigator.clipboard) continue;
    button.hidden = false;
    button.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(field.value);
        if (said) said.textContent = "Copied.";
      } catch (err) {
        field.select();
        if (said) said.textContent = "Select the key and copy it.";
      }
    });
  }
}

function pollInstances() {
  const table = document.getElementById("instances");
  const fresh = document.getElementById("new-instances");
  if (!table || !table.dataset.poll) return;
  const firstPage = table.dataset.firstPage === "yes";
  async function tick() {
    let data;
    try {
      const reply = await fetch(table.dataset.poll, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (!reply.ok) return;
      data = await reply.json();
    } catch (err) {
      return;
    }
    let unseen = 0;
    for (const item of data.instances) {
      const row = table.querySelector(`tr[data-instance="${CSS.escape(item.id)}"]`);
      if (!row) { unseen += 1; continue; }
      const state = row.querySelector('[data-field="state"]');
      if (state && state.textContent !== item.state) {
        state.textContent = item.state;
        state.className = `state state-${item.state}`;
      }
      const detail = row.querySelector('[data-field="detail"]');
      if (detail) detail.textContent = item.detail;
      const cost = row.querySelector('[data-field="cost"]');
      if (cost) cost.textContent = item.cost;
    }
    if (fresh && firstPage && unseen > 0) fresh.hidden = false;
  }
  setInterval(tick, 3000);
}

function pollEmptyInstances() {
  // No table yet: show the notice as soon as the first instance exists.
  const fresh = document.getElementById("new-instances");
  if (!fresh || document.getElementById("instances")) return;
  setInterval(async () => {
    try {
      const reply = await fetch("/instances/states.json", { credentials: "same-origin" });
      if (reply.ok && (await reply.json()).instances.length) fresh.hidden = false;
    } catch (err) { /* try again on the next tick */ }
  }, 3000);
}

document.addEventListener("DOMContentLoaded", () => {
  setUpCopyButtons();
  pollInstances();
  pollEmptyInstances();
});
