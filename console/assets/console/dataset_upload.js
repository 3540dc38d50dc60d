// Uploads a dataset file through the chunked API: open an upload, PUT slices of at most chunk_max_bytes at the
// offset the console says it stands at, then complete. The upload's id is kept per file (name, size, date) in
// localStorage, so choosing the same file again after a broken connection resumes where it stopped.
(function () {
  "use strict";
  const box = document.getElementById("dataset-upload");
  if (!box) return;
  const form = document.getElementById("dataset-upload-form");
  const input = document.getElementById("dataset-file");
  const progress = document.getElementById("dataset-upload-progress");
  const bar = progress.querySelector(".progress-bar");
  const status = document.getElementById("dataset-upload-status");
  const errors = document.getElementById("dataset-upload-errors");
  const api = box.dataset.api;
  const csrf = form.querySelector("[name=csrfmiddlewaretoken]").value;
  const headers = { "X-CSRFToken": csrf, Accept: "application/json" };

  function key(file) {
    return `dataset-upload:${box.dataset.dataset}:${file.name}:${file.size}:${file.lastModified}`;
  }

  function show(done, total) {
    const percent = total ? Math.floor((100 * done) / total) : 0;
    progress.hidden = false;
    bar.style.width = `${percent}%`;
    bar.textContent = `${percent}%`;
    status.textContent = `${box.dataset.msgUploading} ${percent}%`;
  }

  function problems(body) {
    status.textContent = box.dataset.msgFailed;
    errors.replaceChildren();
    const list = body.errors || Object.values(body).flat().filter((x) => typeof x === "string");
    for (const item of list) {
      const li = document.createElement("li");
      li.textContent = typeof item === "string" ? item : item.message;
      errors.appendChild(li);
    }
  }

  async function json(response) {
    try { return await response.json(); } catch (e) { return {}; }
  }

  async function open(file) {
    const saved = localStorage.getItem(key(file));
    if (saved) {
      const found = await fetch(`${api}${saved}/`, { headers, credentials: "same-origin" });
      if (found.ok) {
        const upload = await found.json();
        if (upload.status === "receiving") return upload;
      }
      localStorage.removeItem(key(file));
    }
    const created = await fetch(api, {
      method: "POST",
      credentials: "same-origin",
      headers: { ...headers, "Content-Type": "application/json" },
      body: JSON.stringify({ dataset: Number(box.dataset.dataset), filename: file.name, size: file.size }),
    });
    const body = await json(created);
    if (!created.ok) { problems(body); throw new Error("refused"); }
    localStorage.setItem(key(file), body.id);
    return body;
  }

  async function send(file, upload) {
    let offset = upload.received;
    const step = upload.chunk_max_bytes;
    let failures = 0;
    while (offset < file.size) {
      show(offset, file.size);
      let response;
      try {
        response = await fetch(`${api}${upload.id}/?offset=${offset}`, {
          method: "PUT",
          credentials: "same-origin",
          headers: { ...headers, "Content-Type": "application/octet-stream" },
          body: file.slice(offset, offset + step),
        });
      } catch (e) {
        failures += 1;
        if (failures > 4) { status.textContent = box.dataset.msgPaused; throw e; }
        await new Promise((resolve) => setTimeout(resolve, 1000 * 2 ** failures));
        continue;
      }
      const body = await json(response);
      if (response.status === 409) { offset = body.received; continue; }
      if (!response.ok) { problems(body); throw new Error("refused"); }
      failures = 0;
      offset = body.received;
    }
    show(file.size, file.size);
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const file = input.files[0];
    if (!file) return;
    errors.replaceChildren();
    try {
      const upload = await open(file);
      await send(file, upload);
      status.textContent = box.dataset.msgChecking;
      const done = await fetch(`${api}${upload.id}/complete/`, {
        method: "POST",
        credentials: "same-origin",
        headers: { ...headers, "Content-Type": "application/json" },
        body: "{}",
      });
      const body = await json(done);
      localStorage.removeItem(key(file));
      if (!done.ok) { problems(body); return; }
      window.location.reload();
    } catch (e) {
      if (e.message !== "refused") status.textContent = box.dataset.msgPaused;
    }
  });
})();
