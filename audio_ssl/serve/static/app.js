// audio-ssl serve: the page. Plain JavaScript, no libraries: upload or record, POST /v1/classify?include=all,
// draw what comes back. A token given as /?token=... is sent with every request.
"use strict";

const $ = (id) => document.getElementById(id);
const token = new URLSearchParams(location.search).get("token");
const authHeaders = token ? { Authorization: "Bearer " + token } : {};
const TOP_K = 5;
const MAX_RECORD_SECONDS = 30;
let model = null;

// ---------------------------------------------------------------------------------------------- colours
// "magma"-like ramp for spectrograms and feature maps: dark purple -> orange -> pale yellow.
const STOPS = [[0, [0, 0, 4]], [0.25, [80, 18, 123]], [0.5, [182, 54, 121]], [0.75, [251, 136, 97]],
               [1, [252, 253, 191]]];
function colour(t) {
  t = Math.min(1, Math.max(0, t));
  for (let i = 1; i < STOPS.length; i++) {
    if (t <= STOPS[i][0]) {
      const [t0, a] = STOPS[i - 1], [t1, b] = STOPS[i], f = (t - t0) / (t1 - t0);
      return [0, 1, 2].map((c) => Math.round(a[c] + f * (b[c] - a[c])));
    }
  }
  return STOPS[STOPS.length - 1][1];
}

// Draw a [rows][cols] matrix on a canvas, row 0 at the bottom (lowest frequency band).
function drawMatrix(canvas, values, lo, hi) {
  const rows = values.length, cols = rows ? values[0].length : 0;
  if (!rows || !cols) return;
  const img = new ImageData(cols, rows);
  const span = hi - lo || 1;
  for (let r = 0; r < rows; r++) {
    const y = rows - 1 - r;
    for (let c = 0; c < cols; c++) {
      const [R, G, B] = colour((values[r][c] - lo) / span);
      const i = 4 * (y * cols + c);
      img.data[i] = R; img.data[i + 1] = G; img.data[i + 2] = B; img.data[i + 3] = 255;
    }
  }
  const off = document.createElement("canvas");
  off.width = cols; off.height = rows;
  off.getContext("2d").putImageData(img, 0, 0);
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = canvas.dataset.smooth !== "false";
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  ctx.drawImage(off, 0, 0, canvas.width, canvas.height);
  canvas.dataset.drawn = "true";
}

// ---------------------------------------------------------------------------------------------- status
function setStatus(text, isError = false) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

async function getJSON(url, options = {}) {
  const response = await fetch(url, { ...options, headers: { ...authHeaders, ...(options.headers || {}) } });
  let body = null;
  try { body = await response.json(); } catch (e) { body = { detail: response.statusText } }
  if (!response.ok) {
    const err = new Error(body && body.detail ? body.detail : "HTTP " + response.status);
    err.status = response.status;
    throw err;
  }
  return body;
}

async function loadModel() {
  try {
    model = await getJSON("v1/model");
    const names = model.classes.length > 6 ? model.classes.slice(0, 6).join(", ") + ", …" : model.classes.join(", ");
    $("model-line").textContent = `${model.name}: ${model.encoder || model.method.split(".").pop()} · ` +
      `${model.num_classes} classes (${names}) · ${model.sample_rate} Hz · ${model.clip_seconds} s windows`;
  } catch (err) {
    $("model-line").textContent = "Cannot reach the model: " + err.message;
    $("model-line").classList.add("error");
  }
}

// ---------------------------------------------------------------------------------------------- classify
async function classify(blob, name) {
  $("now").hidden = false;
  $("file-name").textContent = name;
  const player = $("player");
  if (player.src) URL.revokeObjectURL(player.src);
  player.src = URL.createObjectURL(blob);
  setStatus("Listening…");
  const form = new FormData();
  form.append("file", blob, name);
  const started = performance.now();
  try {
    const result = await getJSON(`v1/classify?include=all&top_k=${TOP_K}`, { method: "POST", body: form });
    render(result);
    const ms = Math.round(performance.now() - started);
    setStatus(`${name}: ${result.duration.toFixed(2)} s, ${result.windows} window${result.windows > 1 ? "s" : ""} ` +
              `· answered in ${ms} ms`);
  } catch (err) {
    setStatus(`${name}: ${err.message}`, true);
  }
}

function render(result) {
  $("result-card").hidden = false;
  renderTopK(result.top_k);
  $("summary").textContent = result.windows > 1
    ? `Mean of ${result.windows} windows of ${result.window_seconds} s (hop ${result.hop_seconds} s).`
    : `One ${result.window_seconds} s window` + (result.duration < result.window_seconds ? " (zero-padded)." : ".");
  if (result.waveform) drawWaveform($("waveform"), result.waveform);
  if (result.spectrogram) {
    const s = result.spectrogram;
    drawMatrix($("spectrogram"), s.values, s.min, s.max);
  }
  drawAxis(result.duration);
  renderTimeline(result);
  renderMaps(result.feature_maps);
}

function renderTopK(top) {
  const box = $("topk");
  box.innerHTML = "";
  for (const item of top) {
    const bar = document.createElement("div");
    bar.className = "bar";
    const pct = (100 * item.confidence).toFixed(1);
    bar.innerHTML = `<div class="label"><span></span><span>${pct}%</span></div>` +
                    `<div class="track"><div class="fill" style="width:${pct}%"></div></div>`;
    bar.querySelector(".label span").textContent = item.class;
    box.appendChild(bar);
  }
}

function drawWaveform(canvas, wave) {
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, mid = h / 2;
  ctx.clearRect(0, 0, w, h);
  const peak = Math.max(1e-6, ...wave.max.map(Math.abs), ...wave.min.map(Math.abs));
  ctx.fillStyle = "#3b5bdb";
  const n = wave.min.length;
  for (let i = 0; i < n; i++) {
    const x = (i / n) * w, bw = Math.max(1, w / n);
    const top = mid - (wave.max[i] / peak) * (mid - 4), bottom = mid - (wave.min[i] / peak) * (mid - 4);
    ctx.fillRect(x, top, bw, Math.max(1, bottom - top));
  }
  ctx.fillStyle = "rgba(0,0,0,.15)";
  ctx.fillRect(0, mid, w, 1);
  canvas.dataset.drawn = "true";
}

function drawAxis(duration) {
  const axis = $("time-axis");
  axis.innerHTML = "";
  for (let i = 0; i <= 4; i++) {
    const span = document.createElement("span");
    span.textContent = ((duration * i) / 4).toFixed(duration < 10 ? 1 : 0) + " s";
    axis.appendChild(span);
  }
}

// Long recordings: one row per class of the overall top-k, one column per window, brighter = more confident.
function renderTimeline(result) {
  const block = $("timeline-block"), box = $("timeline");
  box.innerHTML = "";
  if (!result.timeline || result.timeline.length < 2) { block.hidden = true; return; }
  block.hidden = false;
  $("timeline-note").textContent = `(${result.timeline.length} windows of ${result.window_seconds} s)`;
  for (const cls of result.top_k) {
    const label = document.createElement("span");
    label.textContent = cls.class;
    const canvas = document.createElement("canvas");
    canvas.width = result.timeline.length; canvas.height = 1;
    canvas.dataset.smooth = "false";
    const row = result.timeline.map((w) => {
      const hit = w.top_k.find((c) => c.index === cls.index);
      return hit ? hit.confidence : 0;
    });
    box.append(label, canvas);
    drawMatrix(canvas, [row], 0, 1);
    canvas.title = row.map((p, i) => `${result.timeline[i].start.toFixed(1)} s: ${(100 * p).toFixed(0)}%`).join("\n");
  }
}

function renderMaps(fm) {
  const block = $("maps-block"), box = $("maps");
  box.innerHTML = "";
  if (!fm || !fm.maps || !fm.maps.length) { block.hidden = true; return; }
  block.hidden = false;
  const what = fm.kind === "token_norms" ? "each block's patch-token norms" : "each stage's output, mean over channels";
  $("maps-note").textContent = `(${fm.encoder}: ${what}; window ${fm.window.start.toFixed(1)}–${fm.window.end.toFixed(1)} s)`;
  for (const map of fm.maps) {
    const fig = document.createElement("figure");
    const canvas = document.createElement("canvas");
    canvas.width = 320; canvas.height = 160;
    canvas.dataset.smooth = "false";
    const cap = document.createElement("figcaption");
    cap.innerHTML = `<strong></strong> · ${map.channels} ch · ${map.shape.join("×")}`;
    cap.querySelector("strong").textContent = map.name;
    fig.append(canvas, cap);
    box.appendChild(fig);
    drawMatrix(canvas, map.values, map.min, map.max);
  }
}

// ---------------------------------------------------------------------------------------------- input
$("file-input").addEventListener("change", (event) => {
  const file = event.target.files[0];
  if (file) classify(file, file.name);
});
const drop = $("drop");
["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
drop.addEventListener("drop", (e) => {
  const file = e.dataTransfer.files[0];
  if (file) classify(file, file.name);
});

// Recording: raw PCM from the Web Audio API, written as a 16-bit WAV (which every decoder reads).
let recorder = null;
$("record").addEventListener("click", () => (recorder ? recorder.stop() : startRecording()));

async function startRecording() {
  if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    setStatus("This browser cannot record here (the microphone needs https or localhost).", true);
    return;
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (err) {
    setStatus("No microphone: " + err.message, true);
    return;
  }
  const ctx = new AudioContext();
  const source = ctx.createMediaStreamSource(stream);
  const node = ctx.createScriptProcessor(4096, 1, 1);
  const chunks = [];
  node.onaudioprocess = (e) => chunks.push(new Float32Array(e.inputBuffer.getChannelData(0)));
  source.connect(node);
  node.connect(ctx.destination);
  const button = $("record");
  button.classList.add("recording");
  const began = Date.now();
  const timer = setInterval(() => {
    const s = (Date.now() - began) / 1000;
    button.textContent = `■ Stop (${s.toFixed(0)} s)`;
    if (s >= MAX_RECORD_SECONDS) recorder.stop();
  }, 250);
  setStatus("Recording… press Stop when done.");
  recorder = {
    stop() {
      clearInterval(timer);
      node.disconnect(); source.disconnect();
      stream.getTracks().forEach((t) => t.stop());
      const rate = ctx.sampleRate;
      ctx.close();
      recorder = null;
      button.classList.remove("recording");
      button.textContent = "● Record";
      classify(encodeWav(chunks, rate), "recording.wav");
    },
  };
}

function encodeWav(chunks, rate) {
  const n = chunks.reduce((sum, c) => sum + c.length, 0);
  const buffer = new ArrayBuffer(44 + 2 * n), view = new DataView(buffer);
  const text = (offset, s) => [...s].forEach((ch, i) => view.setUint8(offset + i, ch.charCodeAt(0)));
  text(0, "RIFF"); view.setUint32(4, 36 + 2 * n, true); text(8, "WAVE"); text(12, "fmt ");
  view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
  view.setUint32(24, rate, true); view.setUint32(28, 2 * rate, true); view.setUint16(32, 2, true);
  view.setUint16(34, 16, true); text(36, "data"); view.setUint32(40, 2 * n, true);
  let offset = 44;
  for (const chunk of chunks) {
    for (let i = 0; i < chunk.length; i++, offset += 2) {
      view.setInt16(offset, Math.max(-1, Math.min(1, chunk[i])) * 0x7fff, true);
    }
  }
  return new Blob([buffer], { type: "audio/wav" });
}

loadModel();
