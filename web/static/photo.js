// The photo view: detection boxes over the original (positions from the 0-1 boxes, set through
// the style object, which the Content Security Policy allows), and a reload when processing ends.
"use strict";

(() => {
  const root = document.getElementById("photo");
  if (!root) return;

  for (const box of document.querySelectorAll("#photo-stage .box")) {
    const [ymin, xmin, ymax, xmax] = box.dataset.box.split(",").map(Number);
    box.style.top = ymin * 100 + "%";
    box.style.left = xmin * 100 + "%";
    box.style.height = (ymax - ymin) * 100 + "%";
    box.style.width = (xmax - xmin) * 100 + "%";
    box.hidden = false;
  }

  // Pointing at a label picks out its boxes.
  for (const chip of document.querySelectorAll("#photo-labels .label-chip")) {
    const boxes = document.querySelectorAll("#photo-stage .box");
    const mark = (on) => {
      for (const box of boxes) {
        box.classList.toggle("dim", on && box.dataset.label !== chip.dataset.label);
      }
    };
    chip.addEventListener("mouseenter", () => mark(true));
    chip.addEventListener("mouseleave", () => mark(false));
  }

  const status = root.dataset.status;
  if (status !== "uploaded" && status !== "processing") return;
  const poll = async () => {
    try {
      const response = await fetch(root.dataset.imageUrl, { headers: { Accept: "application/json" } });
      if (response.status === 401 || response.status === 404) return window.location.reload();
      if (response.ok && (await response.json()).image.status !== status) {
        return window.location.reload();
      }
    } catch (error) {
      // Offline for a moment: try again.
    }
    setTimeout(poll, 1500);
  };
  setTimeout(poll, 1500);
})();
