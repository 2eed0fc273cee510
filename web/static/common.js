// Shared by every page: the CSRF token for API calls, confirmation of destructive forms, photo
// tiles (filling one from the API, its own delete and retry buttons, opening it in the photo
// view with previous/next), and search results' "Load more".
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

  // A tile from the API's photo object: its display strings and action URLs, as text.
  fillCard(card, image) {
    const display = image.display;
    card.id = "photo-" + image.id;
    card.dataset.imageId = image.id;
    card.dataset.status = image.status;
    const link = card.querySelector(".photo-link");
    link.href = image.urls.page;
    link.setAttribute("aria-label", display.title);

    const thumb = card.querySelector("img.thumb");
    const placeholder = card.querySelector(".thumb-placeholder");
    if (image.urls.thumbnail) {
      if (thumb.getAttribute("src") !== image.urls.thumbnail) thumb.src = image.urls.thumbnail;
      thumb.hidden = false;
      placeholder.hidden = true;
    } else {
      thumb.hidden = true;
      placeholder.hidden = false;
    }
    const badge = card.querySelector(".status-badge");
    badge.dataset.status = image.status;
    badge.textContent = display.status;
    badge.hidden = image.status === "done";
    const reason = card.querySelector(".reason");
    reason.textContent = display.reason || "";
    reason.hidden = !display.reason;
    card.querySelector(".file-name").textContent = image.fileName;
    for (const span of card.querySelectorAll(".action-name")) span.textContent = " " + image.fileName;
    const select = card.querySelector(".select-photo"); // not on search results
    if (select) select.setAttribute("aria-label", "Select " + image.fileName);

    const retry = card.querySelector(".retry-button");
    retry.dataset.url = image.actions.retry || "";
    retry.hidden = !image.actions.retry;
    card.querySelector(".delete-photo-button").dataset.url = image.actions.delete;
    return card;
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
      backLabel: (document.querySelector("[data-back-label]") || { dataset: {} }).dataset.backLabel,
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

// Search results beyond the first page, a page at a time (nextCursor).
(() => {
  const results = document.getElementById("search-results");
  const more = document.getElementById("load-more");
  if (!results || !more) return;
  const template = document.getElementById("photo-card-template");
  more.addEventListener("click", async () => {
    more.disabled = true;
    const url = new URL(results.dataset.imagesUrl, window.location.href);
    url.searchParams.set("cursor", results.dataset.nextCursor);
    const answer = await imagerec.api(url.pathname + url.search);
    more.disabled = false;
    if (!answer.ok) return;
    let list = results.querySelector(".photo-grid");
    for (const image of answer.body.images) {
      if (document.getElementById("photo-" + image.id)) continue;
      list.appendChild(imagerec.fillCard(template.content.firstElementChild.cloneNode(true), image));
    }
    results.dataset.nextCursor = answer.body.nextCursor || "";
    more.hidden = !answer.body.nextCursor;
  });
})();
