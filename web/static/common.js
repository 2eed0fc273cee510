// Shared by every page: the CSRF token for API calls, confirmation of destructive forms, and a
// photo tile's own buttons (delete in place, retry), wherever tiles are shown.
"use strict";

window.imagerec = {
  csrfToken() {
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  },

  // A JSON API call; resolves to {status, body} (body null for 204/304 or non-JSON answers).
  async api(url, options = {}) {
    const headers = { Accept: "application/json", ...(options.headers || {}) };
    if (options.method && options.method !== "GET") headers["X-CSRF-Token"] = imagerec.csrfToken();
    if (options.json !== undefined) headers["Content-Type"] = "application/json";
    const response = await fetch(url, {
      method: options.method || "GET",
      headers,
      body: options.json !== undefined ? JSON.stringify(options.json) : undefined,
      cache: "no-store",
    });
    let body = null;
    if ((response.headers.get("Content-Type") || "").includes("json")) {
      try {
        body = await response.json();
      } catch (error) {
        body = null;
      }
    }
    return { status: response.status, ok: response.ok, headers: response.headers, body };
  },

  // Something for screen readers to say (the page's polite live region).
  announce(text) {
    const region = document.getElementById("announcer");
    if (!region || !text) return;
    region.textContent = "";
    window.setTimeout(() => (region.textContent = text), 50);
  },

  // Removes a tile from the page without moving what the user is looking at.
  removeCard(card) {
    const next = card.nextElementSibling || card.previousElementSibling;
    const list = card.parentElement;
    card.remove();
    if (list && !list.children.length && list.closest(".day")) list.closest(".day").remove();
    document.dispatchEvent(new CustomEvent("imagerec:removed", { detail: card.dataset.imageId }));
    const focusTarget = next && next.querySelector(".photo-link");
    if (focusTarget) focusTarget.focus({ preventScroll: true });
  },
};

document.documentElement.classList.add("js");

document.addEventListener("submit", (event) => {
  const form = event.target;
  const question = form.dataset.confirm;
  if (question && !window.confirm(question)) event.preventDefault();
});

// Opening a tile leaves the row it came from in this tab's session storage, so the photo view
// can step to the previous and next photo and go back to this list (photo.js, album.js).
document.addEventListener("click", (event) => {
  const link = event.target.closest("#photo-grid .photo-link");
  if (!link || event.defaultPrevented) return;
  const cards = Array.from(document.querySelectorAll("#photo-grid .photo-card[data-image-id]"));
  sessionStorage.setItem(
    "imagerec:album-context",
    JSON.stringify({
      back: window.location.pathname + window.location.search,
      pages: cards.map((card) => card.querySelector(".photo-link").getAttribute("href")),
      ids: cards.map((card) => card.dataset.imageId),
      current: link.closest(".photo-card").dataset.imageId,
    })
  );
});

document.addEventListener("click", async (event) => {
  const button = event.target.closest(".photo-card .delete-photo-button, .photo-card .retry-button");
  if (!button || !button.dataset.url) return;
  const card = button.closest(".photo-card");
  const name = card.querySelector(".file-name").textContent;
  if (button.classList.contains("delete-photo-button")) {
    if (!window.confirm("Delete " + name + "?")) return;
    button.disabled = true;
    const answer = await imagerec.api(button.dataset.url, { method: "DELETE" });
    if (answer.ok || answer.status === 404) {
      imagerec.removeCard(card);
      imagerec.announce("Deleted " + name + ".");
    } else {
      button.disabled = false;
      window.alert((answer.body && answer.body.error) || "The photo could not be deleted.");
    }
  } else {
    button.disabled = true;
    const answer = await imagerec.api(button.dataset.url, { method: "POST" });
    button.disabled = false;
    if (!answer.ok) window.alert((answer.body && answer.body.error) || "The photo could not be retried.");
    document.dispatchEvent(new CustomEvent("imagerec:changed", { detail: answer.body && answer.body.image }));
  }
});
