// The album page: a gallery of tiles grouped under day headings, loaded a page at a time from
// the JSON API (nextCursor), kept live through the album's change feed only while something is
// in flight (a quiet album costs nothing), uploads with a progress bar per file, selection of several
// photos to delete or move. Every word and URL comes from the server (the JSON's display strings
// and actions, or the template); data is only ever put into the page as text.
"use strict";

(() => {
  const root = document.getElementById("album");
  if (!root) return;

  const grid = document.getElementById("photo-grid");
  const cardTemplate = document.getElementById("photo-card-template");
  const dayTemplate = document.getElementById("day-template");
  const itemTemplate = document.getElementById("upload-item-template");
  const words = document.getElementById("upload-words").dataset;
  const uploads = document.getElementById("uploads");
  const uploadList = document.getElementById("upload-list");
  const fileInput = document.getElementById("file-input");
  const uploadForm = document.getElementById("upload-form");
  const emptyNote = document.getElementById("no-photos");
  const filterNav = document.getElementById("label-filter");
  const loadMore = document.getElementById("load-more");
  const summary = document.getElementById("album-summary");
  const label = root.dataset.label;
  const sort = root.dataset.sort;
  const maxBytes = Number(root.dataset.maxUploadBytes);

  const PAGE = 120;
  const POLL_MS = 2000;
  const PARALLEL_UPLOADS = 3;
  const CLEAR_DONE_AFTER_MS = 4000;
  const BUSY = new Set(["uploaded", "processing"]);
  const UPLOADING = new Set(["queued", "uploading"]);

  const images = new Map(); // id -> the API's photo object
  const stamps = new Map(); // id -> the JSON last painted on its tile
  let order = []; // ids, in the server's order for this sort
  let nextCursor = null;
  let loading = false;

  function listUrl(cursor) {
    const params = new URLSearchParams({ sort, limit: String(PAGE) });
    if (label) params.set("label", label);
    if (cursor) params.set("cursor", cursor);
    return root.dataset.imagesUrl + "?" + params;
  }

  // --- tiles -----------------------------------------------------------------------------------

  function cardFor(image) {
    const card =
      document.getElementById("photo-" + image.id) ||
      cardTemplate.content.firstElementChild.cloneNode(true);
    const stamp = JSON.stringify(image);
    if (stamps.get(image.id) !== stamp || !card.id) {
      imagerec.fillCard(card, image);
      stamps.set(image.id, stamp);
    }
    return card;
  }

  function newDay(day) {
    const section = dayTemplate.content.firstElementChild.cloneNode(true);
    section.dataset.day = day;
    section.querySelector(".day-heading").textContent = day;
    return section;
  }

  function trim(list, keep) {
    if (!list) return;
    while (list.children.length > keep) list.lastElementChild.remove();
  }

  // Tiles in the server's order, each under its day's heading; existing nodes are reused, so
  // focus, selection and loaded thumbnails survive every refresh.
  function render() {
    let day = null;
    let list = null;
    let position = 0;
    let sections = 0;
    for (const id of order) {
      const image = images.get(id);
      if (image.display.day !== day) {
        trim(list, position);
        day = image.display.day;
        let section = grid.children[sections];
        if (!section || section.dataset.day !== day) {
          section = newDay(day);
          grid.insertBefore(section, grid.children[sections] || null);
        }
        sections += 1;
        list = section.querySelector(".photo-grid");
        position = 0;
      }
      const card = cardFor(image);
      if (list.children[position] !== card) list.insertBefore(card, list.children[position] || null);
      position += 1;
    }
    trim(list, position);
    trim(grid, sections);
    emptyNote.hidden = order.length > 0 || loading;
    loadMore.hidden = !nextCursor;
    grid.setAttribute("aria-busy", String(loading));
    followUploads();
  }

  function merge(list, fromTop) {
    for (const image of list) images.set(image.id, image);
    const ids = list.map((i) => i.id);
    const incoming = new Set(ids);
    const rest = order.filter((id) => !incoming.has(id));
    order = fromTop ? ids.concat(rest) : rest.concat(ids);
  }

  function forget(id) {
    images.delete(id);
    stamps.delete(id);
    order = order.filter((x) => x !== id);
    selected.delete(id);
    updateSelection();
  }

  // --- loading and polling ---------------------------------------------------------------------

  async function loadPage(cursor) {
    loading = true;
    try {
      const answer = await imagerec.api(listUrl(cursor));
      if (answer.status === 401 || answer.status === 404) return window.location.reload();
      if (!answer.ok) return;
      nextCursor = answer.body.nextCursor || null;
      merge(answer.body.images, false);
    } catch (error) {
      // Offline for a moment: the button stays, a later scroll tries again.
    } finally {
      loading = false;
      render();
    }
  }

  async function loadNextPage() {
    if (loading || !nextCursor) return;
    await loadPage(nextCursor);
    schedule();
  }

  function inFlight() {
    if (activeUploads || queue.length) return true;
    if (uploadList.querySelector(".upload-item[data-following]")) return true;
    for (const id of order) if (BUSY.has(images.get(id).status)) return true;
    for (const item of uploadList.children) if (BUSY.has(item.dataset.state)) return true;
    return false;
  }

  let timer = null;
  function schedule() {
    clearTimeout(timer);
    timer = null;
    // The first call only starts the watch: at once, so no change slips past it.
    if (inFlight() && !document.hidden) timer = setTimeout(poll, since ? POLL_MS : 0);
  }

  // The album's change feed: only the photos written since the last call, so a poll of a
  // quiet album answers next to nothing. The first call only starts the watch.
  let since = null;

  function changesUrl() {
    const params = new URLSearchParams({ sort });
    if (since) params.set("since", since);
    return root.dataset.changesUrl + "?" + params;
  }

  async function poll() {
    try {
      const answer = await imagerec.api(changesUrl());
      if (answer.status === 401 || answer.status === 404) return window.location.reload();
      if (answer.ok) {
        const body = answer.body;
        const watching = since !== null;
        since = body.since;
        if (body.reload) {
          order = [];
          nextCursor = null;
          await loadPage(null);
        } else if (watching && body.images.length) {
          apply(body.images);
        }
        if (body.album) refreshAlbum();
      }
      root.dataset.polls = String(Number(root.dataset.polls || 0) + 1);
    } catch (error) {
      // Offline for a moment: keep the page as it is and try again.
    }
    schedule();
  }

  // Changed photos replace theirs in place; new ones (uploaded elsewhere) go first, unless the
  // album is filtered: the next visit places them.
  function apply(changed) {
    const fresh = [];
    for (const image of changed) {
      const before = images.get(image.id);
      if (!before) {
        if (!label) fresh.push(image);
        continue;
      }
      images.set(image.id, image);
      const mine = uploadList.querySelector(`.upload-item[data-image-id="${image.id}"]`);
      if (before.status !== image.status && !mine) {
        imagerec.announce(image.fileName + ": " + image.display.status);
      }
    }
    if (fresh.length) merge(fresh, true);
    render();
  }

  // Back to a tab that was away: the first page again, a 304 when nothing changed meanwhile.
  let etag = null;
  async function revalidate() {
    try {
      const answer = await imagerec.api(listUrl(null), {
        headers: etag ? { "If-None-Match": etag } : {},
      });
      if (answer.status === 401 || answer.status === 404) return window.location.reload();
      if (answer.status === 200) {
        etag = answer.headers.get("ETag");
        merge(answer.body.images, true);
        render();
        refreshAlbum();
      }
    } catch (error) {
      // Offline: the page stays as it is.
    }
    schedule();
  }

  document.addEventListener("visibilitychange", () => {
    if (document.hidden) return;
    if (inFlight()) schedule();
    else revalidate();
  });

  // The album's own numbers and labels, as the server counts them.
  async function refreshAlbum() {
    try {
      const answer = await imagerec.api(root.dataset.albumUrl);
      if (!answer.ok) return;
      const album = answer.body.album;
      summary.textContent = [album.display.photoCount, album.display.states]
        .filter(Boolean)
        .join(" · ");
      renderFilter(answer.body.labels);
    } catch (error) {
      // The numbers wait for the next change.
    }
  }

  function renderFilter(labels) {
    const all = document.getElementById("filter-all");
    const current = Array.from(filterNav.querySelectorAll(".filter-chip:not(#filter-all)"));
    const wanted = labels.map((l) => l.label + "\u0000" + l.count).join("\u0001");
    const shown = current
      .map((c) => c.dataset.label + "\u0000" + c.querySelector(".count").textContent)
      .join("\u0001");
    if (wanted !== shown) {
      const chips = labels.map((l) => {
        const chip = all.cloneNode(false);
        chip.removeAttribute("id");
        chip.removeAttribute("aria-current");
        chip.classList.toggle("active", l.label === label);
        if (l.label === label) chip.setAttribute("aria-current", "page");
        chip.dataset.label = l.label;
        const url = new URL(all.href);
        url.searchParams.set("label", l.label);
        chip.href = url.pathname + url.search;
        chip.textContent = l.label + " ";
        const count = document.createElement("span");
        count.className = "count";
        count.textContent = l.count;
        chip.appendChild(count);
        return chip;
      });
      current.forEach((c) => c.remove());
      all.after(...chips);
    }
    filterNav.hidden = labels.length === 0;
  }

  if ("IntersectionObserver" in window) {
    new IntersectionObserver(
      (entries) => {
        if (entries.some((e) => e.isIntersecting)) loadNextPage();
      },
      { rootMargin: "600px" }
    ).observe(loadMore);
  }
  loadMore.addEventListener("click", loadNextPage);

  // --- uploads ---------------------------------------------------------------------------------

  const queue = [];
  let activeUploads = 0;
  let uploadCount = 0;
  let clearTimer = null;

  function setUploadState(item, state, text) {
    if (item.dataset.state === state && item.querySelector(".upload-state").textContent === text) {
      return;
    }
    item.dataset.state = state;
    item.querySelector(".upload-state").textContent = text;
    imagerec.announce(item.dataset.fileName + ": " + text);
    scheduleClear();
  }

  // Finished uploads leave the list on their own; problems stay until the user clears them.
  function scheduleClear() {
    clearTimeout(clearTimer);
    const items = Array.from(uploadList.children);
    const pending = items.some((i) => UPLOADING.has(i.dataset.state) || BUSY.has(i.dataset.state));
    if (pending || !items.length) return;
    clearTimer = setTimeout(() => {
      for (const item of uploadList.querySelectorAll(".upload-item[data-state='done']")) {
        item.remove();
      }
      uploads.hidden = !uploadList.children.length;
    }, CLEAR_DONE_AFTER_MS);
  }

  document.getElementById("clear-uploads").addEventListener("click", () => {
    for (const item of Array.from(uploadList.children)) {
      if (!UPLOADING.has(item.dataset.state) && !BUSY.has(item.dataset.state)) item.remove();
    }
    uploads.hidden = !uploadList.children.length;
    if (uploads.hidden) fileInput.focus();
  });

  function followUploads() {
    for (const item of uploadList.querySelectorAll(".upload-item[data-image-id]")) {
      const image = images.get(item.dataset.imageId);
      if (image) setUploadState(item, image.status, image.display.status);
      else if (BUSY.has(item.dataset.state)) followUpload(item); // not in this filtered view
    }
  }

  // A photo uploaded while the album is filtered (or sorted out of the first page) may never
  // show in the list the page polls: ask for it on its own.
  async function followUpload(item) {
    if (item.dataset.following) return; // still waiting for the last answer
    item.dataset.following = "1";
    try {
      const answer = await imagerec.api(item.dataset.resourceUrl);
      if (answer.status === 404) setUploadState(item, "deleted", words.deleted);
      else if (answer.ok) setUploadState(item, answer.body.image.status, answer.body.image.display.status);
    } catch (error) {
      // Offline for a moment: the next poll asks again.
    } finally {
      delete item.dataset.following;
    }
  }

  function addUploadItem(file) {
    const item = itemTemplate.content.firstElementChild.cloneNode(true);
    uploadCount += 1;
    item.dataset.fileName = file.name;
    const name = item.querySelector(".upload-name");
    name.textContent = file.name;
    name.id = "upload-name-" + uploadCount;
    item.querySelector("progress").setAttribute("aria-labelledby", name.id);
    uploadList.prepend(item);
    uploads.hidden = false;
    setUploadState(item, "queued", words.queued);
    return item;
  }

  function enqueue(files) {
    for (const file of files) {
      const item = addUploadItem(file);
      if (file.size > maxBytes) {
        setUploadState(item, "error", words.tooLarge);
        continue;
      }
      queue.push({ file, item });
    }
    pump();
    schedule();
  }

  function pump() {
    while (activeUploads < PARALLEL_UPLOADS && queue.length) {
      const { file, item } = queue.shift();
      activeUploads += 1;
      send(file, item).finally(() => {
        activeUploads -= 1;
        pump();
        schedule();
      });
    }
  }

  function send(file, item) {
    return new Promise((resolve) => {
      const bar = item.querySelector("progress");
      const xhr = new XMLHttpRequest();
      xhr.open("POST", root.dataset.uploadUrl);
      xhr.setRequestHeader("X-CSRF-Token", imagerec.csrfToken());
      xhr.setRequestHeader("Accept", "application/json");
      xhr.upload.onprogress = (event) => {
        if (event.lengthComputable) bar.value = Math.round((event.loaded / event.total) * 100);
      };
      setUploadState(item, "uploading", words.uploading);
      xhr.onload = () => {
        let body = {};
        try {
          body = JSON.parse(xhr.responseText);
        } catch (error) {
          body = { error: words.broken };
        }
        if (xhr.status === 201 && body.images.length) {
          bar.value = 100;
          const image = body.images[0];
          item.dataset.imageId = image.id;
          item.dataset.resourceUrl = image.actions.delete; // the photo's API resource
          if (!label) {
            merge([image], true);
            render();
          }
          setUploadState(item, image.status, image.display.status);
        } else if (xhr.status === 409 && body.duplicates && body.duplicates.length) {
          // Not this upload's photo: its status must never be painted on this row.
          const duplicate = body.duplicates[0];
          bar.value = 100;
          item.dataset.duplicateOf = duplicate.duplicateOf.id;
          setUploadState(item, "duplicate", duplicate.message);
        } else {
          setUploadState(item, "error", body.error || words.broken);
        }
        resolve();
      };
      xhr.onerror = () => {
        setUploadState(item, "error", words.broken);
        resolve();
      };
      const form = new FormData();
      form.append("file", file, file.name);
      xhr.send(form);
    });
  }

  fileInput.addEventListener("change", () => {
    enqueue(Array.from(fileInput.files));
    fileInput.value = "";
  });
  uploadForm.addEventListener("submit", (event) => {
    event.preventDefault();
    enqueue(Array.from(fileInput.files));
    fileInput.value = "";
  });
  // Files dropped anywhere on the page.
  let dragDepth = 0;
  const isFileDrag = (event) =>
    event.dataTransfer && Array.from(event.dataTransfer.types || []).includes("Files");
  document.addEventListener("dragenter", (event) => {
    if (!isFileDrag(event)) return;
    event.preventDefault();
    dragDepth += 1;
    document.body.classList.add("dragging");
  });
  document.addEventListener("dragover", (event) => {
    if (isFileDrag(event)) event.preventDefault();
  });
  document.addEventListener("dragleave", () => {
    dragDepth = Math.max(0, dragDepth - 1);
    if (!dragDepth) document.body.classList.remove("dragging");
  });
  document.addEventListener("drop", (event) => {
    dragDepth = 0;
    document.body.classList.remove("dragging");
    if (!event.dataTransfer || !event.dataTransfer.files.length) return;
    event.preventDefault();
    enqueue(Array.from(event.dataTransfer.files));
  });

  // --- selection: delete or move several photos ------------------------------------------------

  const selected = new Set();
  const bulkBar = document.getElementById("bulk-bar");
  const selectButton = document.getElementById("select-button");
  const countText = document.getElementById("selected-count");
  const moveTarget = document.getElementById("move-target");
  let albumsLoaded = false;

  function setSelecting(on) {
    root.classList.toggle("selecting", on);
    selectButton.setAttribute("aria-pressed", String(on));
    if (!on) {
      selected.clear();
      for (const box of grid.querySelectorAll(".select-photo:checked")) box.checked = false;
    }
    updateSelection();
    if (on) loadAlbums();
  }

  function updateSelection() {
    for (const card of grid.querySelectorAll(".photo-card.selected")) {
      if (!selected.has(card.dataset.imageId)) card.classList.remove("selected");
    }
    for (const id of selected) {
      const card = document.getElementById("photo-" + id);
      if (card) card.classList.add("selected");
    }
    const n = selected.size;
    countText.textContent = n === 1 ? countText.dataset.one : countText.dataset.many.replace("{n}", n);
    bulkBar.hidden = !root.classList.contains("selecting") && n === 0;
    for (const id of ["bulk-delete-button", "bulk-move-button"]) {
      document.getElementById(id).disabled = n === 0;
    }
  }

  async function loadAlbums() {
    if (albumsLoaded) return;
    albumsLoaded = true;
    const answer = await imagerec.api(root.dataset.albumsUrl);
    if (!answer.ok) return;
    for (const album of answer.body.albums) {
      if (String(album.id) === root.dataset.albumId) continue;
      const option = document.createElement("option");
      option.value = album.id;
      option.textContent = album.name;
      moveTarget.appendChild(option);
    }
  }

  selectButton.addEventListener("click", () => setSelecting(!root.classList.contains("selecting")));
  document.getElementById("bulk-cancel-button").addEventListener("click", () => {
    setSelecting(false);
    selectButton.focus();
  });

  grid.addEventListener("change", (event) => {
    const box = event.target.closest(".select-photo");
    if (!box) return;
    const id = box.closest(".photo-card").dataset.imageId;
    if (box.checked) selected.add(id);
    else selected.delete(id);
    if (box.checked && !root.classList.contains("selecting")) setSelecting(true);
    updateSelection();
  });

  grid.addEventListener("click", (event) => {
    const link = event.target.closest(".photo-link");
    if (!link) return;
    if (root.classList.contains("selecting")) {
      // While selecting, a tile toggles instead of opening.
      event.preventDefault();
      const box = link.closest(".photo-card").querySelector(".select-photo");
      box.checked = !box.checked;
      box.dispatchEvent(new Event("change", { bubbles: true }));
    }
  });

  async function bulk(action, extra) {
    const ids = Array.from(selected);
    const answer = await imagerec.api(root.dataset.bulkUrl, {
      method: "POST",
      json: { action, ids, ...extra },
    });
    const body = answer.body || {};
    const gone = body.deleted || body.moved || [];
    for (const id of gone) {
      const card = document.getElementById("photo-" + id);
      if (card) imagerec.removeCard(card);
      forget(id);
    }
    const errors = body.errors || [];
    if (!answer.ok || errors.length) {
      window.alert((errors[0] && errors[0].error) || body.error || "That did not work.");
    }
    render();
    refreshAlbum();
    return gone.length;
  }

  document.getElementById("bulk-delete-button").addEventListener("click", async () => {
    if (!selected.size || !window.confirm(countText.textContent + ": delete them?")) return;
    const n = await bulk("delete", {});
    if (n) imagerec.announce(countText.dataset.many.replace("{n}", n) + ": deleted.");
    setSelecting(false);
  });

  document.getElementById("bulk-move-button").addEventListener("click", async () => {
    if (!selected.size) return;
    if (!moveTarget.value) {
      moveTarget.focus();
      return;
    }
    const name = moveTarget.selectedOptions[0].textContent;
    const n = await bulk("move", { albumId: Number(moveTarget.value) });
    if (n) imagerec.announce(countText.dataset.many.replace("{n}", n) + ": moved to " + name + ".");
    setSelecting(false);
  });

  document.addEventListener("imagerec:removed", (event) => {
    forget(event.detail);
    render();
    refreshAlbum();
  });
  document.addEventListener("imagerec:changed", (event) => {
    if (event.detail) {
      images.set(event.detail.id, event.detail);
      render();
    }
    schedule();
  });

  // --- coming back from the photo view --------------------------------------------------------

  const CONTEXT = "imagerec:album-context"; // written by common.js when a tile is opened

  // Back from a photo: the tile it was opened from (or moved to with previous/next) in view.
  async function restorePosition() {
    let context;
    try {
      context = JSON.parse(sessionStorage.getItem(CONTEXT) || "null");
    } catch (error) {
      context = null;
    }
    if (!context || context.back !== window.location.pathname + window.location.search) return;
    for (let pages = 0; !images.has(context.current) && nextCursor && pages < 100; pages += 1) {
      await loadPage(nextCursor);
    }
    const card = document.getElementById("photo-" + context.current);
    if (card) {
      card.scrollIntoView({ block: "center" });
      card.querySelector(".photo-link").focus({ preventScroll: true });
    }
  }

  document.addEventListener("keydown", (event) => {
    if (event.key !== "Escape") return;
    const menu = document.getElementById("album-settings");
    if (menu.open) {
      menu.open = false;
      menu.querySelector("summary").focus();
    } else if (root.classList.contains("selecting")) {
      setSelecting(false);
      selectButton.focus();
    }
  });

  document.getElementById("sort-select").addEventListener("change", (event) => {
    event.target.form.requestSubmit();
  });
  document.getElementById("sort-button").hidden = true;

  // The page came with its first page of photos; without it (an old cached page), ask.
  function firstPage() {
    const data = document.getElementById("first-page");
    if (!data) return loadPage(null);
    const page = JSON.parse(data.textContent);
    nextCursor = page.nextCursor || null;
    merge(page.images, false);
    loading = false;
    render();
    return Promise.resolve();
  }

  (async () => {
    await firstPage();
    performance.mark("gallery-ready"); // the first screen is in the page (tests read this)
    refreshAlbum();
    await restorePosition();
    schedule();
  })();
})();
