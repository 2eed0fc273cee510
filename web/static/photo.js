// The photo view, a lightbox: detection boxes over the photo (positions from the 0-1 boxes, set
// through the style object, which the Content Security Policy allows) with their labels kept
// apart and inside the photo; previous/next through the album as the album page last showed it;
// arrow keys and Escape; a reload when processing ends.
"use strict";

(() => {
  const root = document.getElementById("photo");
  if (!root) return;

  const stage = document.getElementById("photo-stage");
  const boxes = Array.from(stage.querySelectorAll(".box"));

  for (const box of boxes) {
    const [ymin, xmin, ymax, xmax] = box.dataset.box.split(",").map(Number);
    box.style.top = ymin * 100 + "%";
    box.style.left = xmin * 100 + "%";
    box.style.height = (ymax - ymin) * 100 + "%";
    box.style.width = (xmax - xmin) * 100 + "%";
    box.hidden = false;
  }

  const overlaps = (a, b) =>
    a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom;

  // Each label above its box (inside it at the photo's top edge), pulled in from the photo's
  // right edge, and moved down past any label it would cover: identical boxes stay readable.
  function placeLabels() {
    const frame = stage.getBoundingClientRect();
    if (!frame.width) return;
    const placed = [];
    for (const box of boxes) {
      const tag = box.querySelector(".box-label");
      tag.style.transform = "";
      const own = box.getBoundingClientRect();
      const size = tag.getBoundingClientRect();
      let x = 0;
      let y = own.top - frame.top >= size.height ? -size.height : 0;
      const right = own.left + size.width - frame.right;
      if (right > 0) x = -Math.min(right, own.left - frame.left);
      let rect;
      for (let guard = 0; guard < 50; guard += 1) {
        rect = {
          left: own.left + x,
          right: own.left + x + size.width,
          top: own.top + y,
          bottom: own.top + y + size.height,
        };
        const hit = placed.find((other) => overlaps(rect, other));
        if (!hit) break;
        y += hit.bottom - rect.top + 1;
      }
      tag.style.transform = "translate(" + x + "px, " + y + "px)";
      placed.push(rect);
    }
  }

  const image = document.getElementById("photo-image");
  if (image) {
    if (image.complete) placeLabels();
    image.addEventListener("load", placeLabels);
    window.addEventListener("resize", placeLabels);
  }

  // Pointing at (or focusing) a label picks out its boxes.
  for (const chip of document.querySelectorAll("#photo-labels .label-chip")) {
    const mark = (on) => {
      for (const box of boxes) {
        box.classList.toggle("dim", on && box.dataset.label !== chip.dataset.label);
      }
    };
    for (const [type, on] of [["mouseenter", true], ["mouseleave", false], ["focus", true], ["blur", false]]) {
      chip.addEventListener(type, () => mark(on));
    }
  }

  // --- previous / next: the album page left its order in this tab's session storage --------------

  const CONTEXT = "imagerec:album-context";
  const back = document.getElementById("back-to-album");
  const prev = document.getElementById("prev-photo");
  const next = document.getElementById("next-photo");
  let context = null;
  try {
    context = JSON.parse(sessionStorage.getItem(CONTEXT) || "null");
  } catch (error) {
    context = null;
  }
  const here = context ? context.ids.indexOf(root.dataset.imageId) : -1;
  if (here >= 0) {
    back.href = context.back;
    const name = back.querySelector(".back-label");
    if (context.backLabel && name) name.textContent = context.backLabel;
    context.current = root.dataset.imageId;
    sessionStorage.setItem(CONTEXT, JSON.stringify(context));
    if (here > 0) {
      prev.href = context.pages[here - 1];
      prev.hidden = false;
    }
    if (here < context.pages.length - 1) {
      next.href = context.pages[here + 1];
      next.hidden = false;
    }
  }

  // Stepping replaces this entry, so Back (and Escape) return to the album, not along the row.
  for (const link of [prev, next]) {
    link.addEventListener("click", (event) => {
      if (event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
      event.preventDefault();
      window.location.replace(link.href);
    });
  }

  document.addEventListener("keydown", (event) => {
    if (event.altKey || event.ctrlKey || event.metaKey || event.defaultPrevented) return;
    const target = event.target;
    if (target.closest && target.closest("input, textarea, select, [contenteditable]")) return;
    if (event.key === "ArrowLeft" && !prev.hidden) {
      event.preventDefault();
      window.location.replace(prev.href);
    } else if (event.key === "ArrowRight" && !next.hidden) {
      event.preventDefault();
      window.location.replace(next.href);
    } else if (event.key === "Escape") {
      event.preventDefault();
      window.location.assign(back.href);
    }
  });

  root.dataset.ready = "1"; // keys work from now on (tests wait for this)

  // --- a photo still in the pipeline: reload once it has moved on ----------------------------------

  const status = root.dataset.status;
  if (status !== "uploaded" && status !== "processing") return;
  const poll = async () => {
    try {
      const answer = await imagerec.api(root.dataset.imageUrl);
      if (answer.status === 401 || answer.status === 404) return window.location.reload();
      if (answer.ok && answer.body.image.status !== status) return window.location.reload();
    } catch (error) {
      // Offline for a moment: try again.
    }
    setTimeout(poll, 2000);
  };
  setTimeout(poll, 2000);
})();
