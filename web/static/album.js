// The album page: uploads with a progress bar per file, and photo cards kept live by polling
// the JSON API. Data is only ever put into the page as text (textContent), never as HTML.
"use strict";

(() => {
  const root = document.getElementById("album");
  if (!root) return;

  const grid = document.getElementById("photo-grid");
  const template = document.getElementById("photo-card-template");
  const uploadList = document.getElementById("upload-list");
  const dropZone = document.getElementById("upload-form");
  const fileInput = document.getElementById("file-input");
  const emptyNote = document.getElementById("no-photos");
  const filterNav = document.getElementById("label-filter");
  const label = root.dataset.label;
  const maxBytes = Number(root.dataset.maxUploadBytes);
  const STATUS_TEXT = {
    uploaded: "Waiting",
    processing: "Processing",
    done: "Done",
    rejected: "Rejected",
    failed: "Failed",
  };
  const BUSY = new Set(["uploaded", "processing"]);
  const POLL_BUSY_MS = 1500;
  const POLL_IDLE_MS = 5000;
  const PARALLEL_UPLOADS = 3;

  // --- cards -----------------------------------------------------------------------------------

  function metaValue(image, field) {
    switch (field) {
      case "taken":
        return image.takenAt ? image.takenAt.replace("T", " ") : null;
      case "camera": {
        const make = image.camera.make || "";
        const model = image.camera.model || "";
        return (model.startsWith(make) ? model : make + " " + model).trim() || null;
      }
      case "dimensions": {
        if (!image.width) return null;
        const turned = (image.orientation || 1) >= 5;
        return turned ? image.height + " × " + image.width : image.width + " × " + image.height;
      }
      case "bytes":
        return imagerec.humanBytes(image.fileSize || image.size);
      case "place":
        return image.gps ? image.gps.lat.toFixed(5) + ", " + image.gps.lon.toFixed(5) : null;
      default:
        return null;
    }
  }

  function labelChip(l) {
    const li = document.createElement("li");
    li.className = "label-chip";
    li.dataset.label = l.label;
    li.dataset.score = l.score.toFixed(4);
    li.textContent = l.label + " ";
    const score = document.createElement("span");
    score.className = "score";
    score.textContent = Math.floor(l.score * 100) + "%";
    li.appendChild(score);
    return li;
  }

  function fillCard(card, image) {
    card.id = "photo-" + image.id;
    card.dataset.imageId = image.id;
    card.dataset.status = image.status;
    card.querySelector(".photo-link").href = image.urls.page;

    const thumb = card.querySelector("img.thumb");
    const placeholder = card.querySelector(".thumb-placeholder");
    thumb.alt = image.fileName;
    if (image.urls.thumbnail) {
      if (thumb.getAttribute("src") !== image.urls.thumbnail) thumb.src = image.urls.thumbnail;
      thumb.hidden = false;
      placeholder.hidden = true;
    } else {
      thumb.hidden = true;
      placeholder.hidden = false;
    }

    const name = card.querySelector(".file-name");
    name.textContent = image.fileName;
    name.title = image.fileName;

    const badge = card.querySelector(".status-badge");
    badge.className = "status-badge status-" + image.status;
    badge.dataset.status = image.status;
    badge.textContent = STATUS_TEXT[image.status] || image.status;

    const reason = card.querySelector(".reason");
    reason.textContent = image.reason || "";
    reason.hidden = !image.reason;

    const labels = card.querySelector(".labels");
    const shown = Array.from(labels.children, (li) => li.dataset.label + li.dataset.score).join();
    const wanted = image.labels.map((l) => l.label + l.score.toFixed(4)).join();
    if (shown !== wanted) labels.replaceChildren(...image.labels.map(labelChip));

    for (const item of card.querySelectorAll(".meta-item")) {
      const value = metaValue(image, item.dataset.field);
      const dd = item.querySelector("dd");
      if (item.dataset.field === "place" && value) {
        const link = document.createElement("a");
        link.href = image.gps.mapUrl;
        link.rel = "noopener noreferrer";
        link.target = "_blank";
        link.textContent = value;
        dd.replaceChildren(link);
      } else {
        dd.textContent = value || "";
      }
      item.hidden = !value;
    }

    const retryForm = card.querySelector(".retry-form");
    retryForm.action = "/photos/" + encodeURIComponent(image.id) + "/retry";
    retryForm.hidden = !image.retryable;
    card.querySelector(".delete-photo-form").action =
      "/photos/" + encodeURIComponent(image.id) + "/delete";
    return card;
  }

  function cardFor(image) {
    return (
      document.getElementById("photo-" + image.id) ||
      template.content.firstElementChild.cloneNode(true)
    );
  }

  function render(images) {
    const keep = new Set(images.map((i) => "photo-" + i.id));
    for (const card of Array.from(grid.children)) {
      if (!keep.has(card.id)) card.remove();
    }
    images.forEach((image, position) => {
      const card = fillCard(cardFor(image), image);
      if (grid.children[position] !== card) grid.insertBefore(card, grid.children[position] || null);
    });
    emptyNote.hidden = images.length > 0;
    for (const item of uploadList.querySelectorAll(".upload-item[data-image-id]")) {
      const image = images.find((i) => i.id === item.dataset.imageId);
      if (image) setUploadState(item, image.status, STATUS_TEXT[image.status] || image.status);
      else if (BUSY.has(item.dataset.state)) followUpload(item); // not in this filtered view
    }
    if (!label) renderFilter(images);
  }

  // A photo uploaded while the album is filtered may never show in the filtered list: ask for it.
  async function followUpload(item) {
    if (item.dataset.following) return; // still waiting for the last answer
    item.dataset.following = "1";
    try {
      const response = await fetch("/api/images/" + encodeURIComponent(item.dataset.imageId), {
        headers: { Accept: "application/json" },
      });
      if (response.status === 404) {
        setUploadState(item, "deleted", "Deleted");
      } else if (response.ok) {
        const image = (await response.json()).image;
        setUploadState(item, image.status, STATUS_TEXT[image.status] || image.status);
      }
    } catch (error) {
      // Offline for a moment: the next poll asks again.
    } finally {
      delete item.dataset.following;
    }
  }

  function renderFilter(images) {
    const counts = new Map();
    for (const image of images) {
      for (const l of image.labels) counts.set(l.label, (counts.get(l.label) || 0) + 1);
    }
    const sorted = [...counts].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1));
    const chips = sorted.map(([name, count]) => {
      const a = document.createElement("a");
      a.className = "filter-chip";
      a.dataset.label = name;
      a.href = "?label=" + encodeURIComponent(name);
      a.textContent = name + " ";
      const n = document.createElement("span");
      n.className = "count";
      n.textContent = count;
      a.appendChild(n);
      return a;
    });
    const all = document.getElementById("filter-all");
    const current = Array.from(filterNav.querySelectorAll(".filter-chip[data-label]:not([data-label=''])"));
    const same =
      current.length === chips.length &&
      current.every((c, i) => c.dataset.label === chips[i].dataset.label && c.textContent === chips[i].textContent);
    if (!same) {
      current.forEach((c) => c.remove());
      all.after(...chips);
    }
    filterNav.hidden = chips.length === 0;
  }

  // --- polling ---------------------------------------------------------------------------------

  let activeUploads = 0;
  let timer = null;
  let busy = true;

  async function refresh() {
    clearTimeout(timer);
    try {
      const url = root.dataset.imagesUrl + (label ? "?label=" + encodeURIComponent(label) : "");
      const response = await fetch(url, { headers: { Accept: "application/json" } });
      if (response.status === 401 || response.status === 404) {
        window.location.reload(); // signed out or album gone: let the server say where to go
        return;
      }
      if (response.ok) {
        const body = await response.json();
        render(body.images);
        busy = body.images.some((i) => BUSY.has(i.status));
        root.dataset.polls = String(Number(root.dataset.polls || 0) + 1);
      }
    } catch (error) {
      // Offline for a moment: keep the page as it is and try again.
    }
    const pending = (busy || activeUploads) && !document.hidden;
    timer = setTimeout(refresh, pending ? POLL_BUSY_MS : POLL_IDLE_MS);
  }

  document.addEventListener("visibilitychange", () => {
    if (!document.hidden) refresh();
  });

  // --- uploads ---------------------------------------------------------------------------------

  const queue = [];

  function setUploadState(item, state, text) {
    item.dataset.state = state;
    item.querySelector(".upload-state").textContent = text;
  }

  function addUploadItem(file) {
    const item = document.createElement("li");
    item.className = "upload-item";
    item.dataset.fileName = file.name;
    const name = document.createElement("span");
    name.className = "upload-name";
    name.textContent = file.name;
    const bar = document.createElement("progress");
    bar.max = 100;
    bar.value = 0;
    const state = document.createElement("span");
    state.className = "upload-state";
    item.append(name, bar, state);
    uploadList.prepend(item);
    setUploadState(item, "queued", "Queued");
    return item;
  }

  function enqueue(files) {
    for (const file of files) {
      const item = addUploadItem(file);
      if (file.size > maxBytes) {
        setUploadState(item, "error", "Too large: the limit is " + imagerec.humanBytes(maxBytes));
        continue;
      }
      queue.push({ file, item });
    }
    pump();
  }

  function pump() {
    while (activeUploads < PARALLEL_UPLOADS && queue.length) {
      const { file, item } = queue.shift();
      activeUploads += 1;
      send(file, item).finally(() => {
        activeUploads -= 1;
        pump();
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
      setUploadState(item, "uploading", "Uploading");
      xhr.onload = () => {
        let body = {};
        try {
          body = JSON.parse(xhr.responseText);
        } catch (error) {
          body = { error: "The server answered " + xhr.status + "." };
        }
        if (xhr.status === 201 && body.images.length) {
          bar.value = 100;
          const image = body.images[0];
          item.dataset.imageId = image.id;
          setUploadState(item, image.status, STATUS_TEXT[image.status] || image.status);
          if (!label && !document.getElementById("photo-" + image.id)) {
            grid.prepend(fillCard(cardFor(image), image));
            emptyNote.hidden = true;
          }
          refresh();
        } else if (xhr.status === 409 && body.duplicates && body.duplicates.length) {
          // Not this upload's photo: its status must never be painted on this row.
          const duplicate = body.duplicates[0];
          item.dataset.duplicateOf = duplicate.duplicateOf.id;
          setUploadState(item, "duplicate", duplicate.message);
        } else {
          setUploadState(item, "error", body.error || "Upload failed (" + xhr.status + ").");
        }
        resolve();
      };
      xhr.onerror = () => {
        setUploadState(item, "error", "Upload failed: the connection broke.");
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
  dropZone.addEventListener("submit", (event) => {
    event.preventDefault();
    enqueue(Array.from(fileInput.files));
    fileInput.value = "";
  });
  for (const type of ["dragenter", "dragover"]) {
    dropZone.addEventListener(type, (event) => {
      event.preventDefault();
      dropZone.classList.add("dragging");
    });
  }
  for (const type of ["dragleave", "drop"]) {
    dropZone.addEventListener(type, () => dropZone.classList.remove("dragging"));
  }
  dropZone.addEventListener("drop", (event) => {
    event.preventDefault();
    enqueue(Array.from(event.dataTransfer.files));
  });

  refresh();
})();
