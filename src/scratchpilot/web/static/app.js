// Drawing pad + live prediction for scratchpilot. Plain JS, no libraries (the page works offline).
"use strict";

(function () {
  const SIZE = 280;           // CSS pixels of the drawing pad
  const BRUSH = 20;           // stroke width in CSS pixels: ~2 px of MNIST's 20-px box once scaled
  const INK = "#111";
  const PAPER = "#fff";

  const pad = document.getElementById("pad");
  const wrap = document.getElementById("drop-zone");
  const ctx = pad.getContext("2d");
  const labelEl = document.getElementById("label");
  const confidenceEl = document.getElementById("confidence");
  const statusEl = document.getElementById("status");
  const preview = document.getElementById("preview");
  const previewCtx = preview.getContext("2d");
  const bars = Array.from(document.querySelectorAll("#bars li"));
  const upload = document.getElementById("upload");

  // ---------------------------------------------------------------- pad set-up (sharp on HiDPI screens)
  const ratio = Math.max(1, Math.min(3, window.devicePixelRatio || 1));
  pad.width = SIZE * ratio;
  pad.height = SIZE * ratio;
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);

  function clearPad() {
    ctx.save();
    ctx.setTransform(1, 0, 0, 1, 0, 0);
    ctx.fillStyle = PAPER;
    ctx.fillRect(0, 0, pad.width, pad.height);
    ctx.restore();
    hasInk = false;
    wrap.classList.remove("has-ink");
  }

  // ---------------------------------------------------------------- drawing with Pointer Events
  let hasInk = false;
  let activePointer = null;
  let last = null;

  function point(event) {
    const box = pad.getBoundingClientRect();
    const pressure = event.pointerType === "pen" && event.pressure > 0 ? event.pressure : 0.5;
    return {
      x: (event.clientX - box.left) * (SIZE / box.width),
      y: (event.clientY - box.top) * (SIZE / box.height),
      width: BRUSH * (0.6 + 0.8 * pressure),   // pens draw thinner or thicker with pressure
    };
  }

  function strokeTo(p) {
    ctx.strokeStyle = INK;
    ctx.fillStyle = INK;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    if (!last) {
      ctx.beginPath();
      ctx.arc(p.x, p.y, p.width / 2, 0, 2 * Math.PI);
      ctx.fill();
    } else {
      ctx.lineWidth = (last.width + p.width) / 2;
      ctx.beginPath();
      ctx.moveTo(last.x, last.y);
      ctx.lineTo(p.x, p.y);
      ctx.stroke();
    }
    last = p;
    if (!hasInk) {
      hasInk = true;
      wrap.classList.add("has-ink");
    }
  }

  pad.addEventListener("pointerdown", (event) => {
    if (activePointer !== null || (event.pointerType === "mouse" && event.button !== 0)) return;
    event.preventDefault();
    activePointer = event.pointerId;
    pad.setPointerCapture(event.pointerId);
    last = null;
    strokeTo(point(event));
    requestPrediction();
  });

  pad.addEventListener("pointermove", (event) => {
    if (event.pointerId !== activePointer) return;
    event.preventDefault();
    // coalesced events carry every sample between frames: smooth curves from fast strokes
    const samples = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
    for (const sample of samples.length ? samples : [event]) strokeTo(point(sample));
    requestPrediction();
  });

  function endStroke(event) {
    if (event.pointerId !== activePointer) return;
    activePointer = null;
    last = null;
    requestPrediction();
  }
  pad.addEventListener("pointerup", endStroke);
  pad.addEventListener("pointercancel", endStroke);
  pad.addEventListener("contextmenu", (event) => event.preventDefault());

  // ---------------------------------------------------------------- talking to the server
  // At most one request in flight; strokes made meanwhile are sent as soon as it returns, so the
  // prediction follows the pen without queueing stale requests.
  let inFlight = false;
  let dirty = false;
  let generation = 0;         // bumped by Clear: answers about a cleared drawing are dropped

  function requestPrediction() {
    if (!hasInk) return;
    if (inFlight) {
      dirty = true;
      return;
    }
    send(JSON.stringify({ image: pad.toDataURL("image/png") }), { "Content-Type": "application/json" });
  }

  async function send(body, headers) {
    inFlight = true;
    dirty = false;
    const mine = generation;
    labelEl.dataset.state = labelEl.dataset.state === "empty" ? "empty" : "busy";
    try {
      const response = await fetch("/api/predict", { method: "POST", body: body, headers: headers || {} });
      const answer = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
      if (mine !== generation) return;  // the pad was cleared meanwhile
      if (response.ok) {
        show(answer);
      } else if (response.status === 422) {
        showEmpty("Nothing drawn yet.");
      } else {
        showEmpty(answer.error || `HTTP ${response.status}`, true);
      }
    } catch (err) {
      if (mine === generation) showEmpty(`Server unreachable: ${err.message}`, true);
    } finally {
      inFlight = false;
      if (dirty) requestPrediction();
    }
  }

  function show(answer) {
    const probabilities = answer.probabilities;
    const best = answer.label;
    const labels = answer.labels || bars.map((li) => li.dataset.label);
    labelEl.textContent = labels[best];
    labelEl.dataset.state = "done";
    labelEl.dataset.label = labels[best];
    confidenceEl.innerHTML = "";
    confidenceEl.append(`${(probabilities[best] * 100).toFixed(1)}% sure`);
    const second = probabilities.map((p, i) => [p, i]).filter(([, i]) => i !== best).sort((a, b) => b[0] - a[0])[0];
    const small = document.createElement("small");
    small.textContent = `runner-up: ${labels[second[1]]} (${(second[0] * 100).toFixed(1)}%)`;
    confidenceEl.append(small);
    bars.forEach((li, i) => {
      const p = probabilities[i] || 0;
      li.querySelector(".bar-fill").style.width = `${(p * 100).toFixed(1)}%`;
      li.querySelector(".bar-value").textContent = `${(p * 100).toFixed(1)}%`;
      li.dataset.probability = p.toFixed(6);
      li.classList.toggle("top", i === best);
    });
    if (answer.preview) drawPreview(answer.preview);
    setStatus("");
  }

  function showEmpty(message, isError) {
    labelEl.textContent = "?";
    labelEl.dataset.state = "empty";
    delete labelEl.dataset.label;
    confidenceEl.textContent = "—";
    bars.forEach((li) => {
      li.querySelector(".bar-fill").style.width = "0";
      li.querySelector(".bar-value").textContent = "–";
      li.classList.remove("top");
      delete li.dataset.probability;
    });
    previewCtx.clearRect(0, 0, 28, 28);
    setStatus(message || "", isError);
  }

  function drawPreview(pixels) {
    const image = previewCtx.createImageData(28, 28);
    for (let i = 0; i < 784; i++) {
      const v = pixels[i];
      image.data[4 * i] = v;
      image.data[4 * i + 1] = v;
      image.data[4 * i + 2] = v;
      image.data[4 * i + 3] = 255;
    }
    previewCtx.putImageData(image, 0, 0);
  }

  function setStatus(message, isError) {
    statusEl.textContent = message;
    statusEl.classList.toggle("error", Boolean(isError));
  }

  // ---------------------------------------------------------------- uploads (button or drag & drop)
  function uploadFile(file) {
    if (!file) return;
    generation++;
    clearPad();
    // show the picture on the pad (fitted, centred) while the server reads the original file
    const url = URL.createObjectURL(file);
    const img = new Image();
    img.onload = () => {
      const scale = Math.min(SIZE / img.width, SIZE / img.height);
      const w = img.width * scale, h = img.height * scale;
      ctx.drawImage(img, (SIZE - w) / 2, (SIZE - h) / 2, w, h);
      URL.revokeObjectURL(url);
      hasInk = true;
      wrap.classList.add("has-ink");
    };
    img.onerror = () => URL.revokeObjectURL(url);
    img.src = url;
    const form = new FormData();
    form.append("image", file, file.name);
    setStatus(`Reading ${file.name}…`);
    send(form);
  }

  upload.addEventListener("change", () => {
    uploadFile(upload.files[0]);
    upload.value = "";
  });
  wrap.addEventListener("dragover", (event) => {
    event.preventDefault();
    wrap.classList.add("dragging");
  });
  wrap.addEventListener("dragleave", () => wrap.classList.remove("dragging"));
  wrap.addEventListener("drop", (event) => {
    event.preventDefault();
    wrap.classList.remove("dragging");
    uploadFile(event.dataTransfer.files[0]);
  });

  // ---------------------------------------------------------------- clear
  function clearAll() {
    generation++;
    clearPad();
    dirty = false;
    showEmpty("");
  }
  document.getElementById("clear").addEventListener("click", clearAll);
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape") clearAll();
  });

  clearAll();
})();
