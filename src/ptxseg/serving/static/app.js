// The ptxseg page: upload one chest X-ray, show the mask over the image, the findings, downloads.
// Plain browser JavaScript, no build step and no external resources.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { base: null, tint: null, result: null, objectUrls: [], maxMb: null };

function fmt(value, digits) {
  return value === null || value === undefined ? "—" : Number(value).toFixed(digits);
}

function describeOperatingPoint(op) {
  if (!op) return "—";
  if (!op.min_area) return `threshold ${op.bottom}`;
  return `top ${op.top}, min area ${op.min_area} px, bottom ${op.bottom}`;
}

// BTS rim at the hilum level and ACCP apex-to-cupola distance, both estimated from the mask.
function describeSize(f) {
  if (f.bts_class_est === null || f.bts_class_est === undefined) {
    return f.pneumothorax ? "not estimated" : "—";
  }
  const cm = (mm) => `${fmt(mm / 10, 1)} cm`;
  return `BTS ${f.bts_class_est} (rim ${cm(f.bts_rim_mm_est)}) · ` +
    `ACCP ${f.accp_class_est} (apex ${cm(f.accp_apex_mm_est)})`;
}

function showError(message, requestId) {
  const box = $("error");
  box.replaceChildren();
  const title = document.createElement("strong");
  title.textContent = "The image could not be analysed";
  const text = document.createElement("span");
  text.textContent = message;
  box.append(title, text);
  if (requestId) {
    const id = document.createElement("small");
    id.textContent = `Request ${requestId}`;
    box.append(id);
  }
  box.hidden = false;
}

function loadImage(src) {
  return new Promise((resolve, reject) => {
    const img = new Image();
    img.onload = () => resolve(img);
    img.onerror = () => reject(new Error("the returned image could not be displayed"));
    img.src = src;
  });
}

// A red, transparent-elsewhere canvas from the 0/255 mask PNG.
function tintMask(maskImg) {
  const c = document.createElement("canvas");
  c.width = maskImg.naturalWidth;
  c.height = maskImg.naturalHeight;
  const ctx = c.getContext("2d");
  ctx.drawImage(maskImg, 0, 0);
  const data = ctx.getImageData(0, 0, c.width, c.height);
  const px = data.data;
  for (let i = 0; i < px.length; i += 4) {
    const on = px[i] > 127;
    px[i] = 230; px[i + 1] = 40; px[i + 2] = 40; px[i + 3] = on ? 255 : 0;
  }
  ctx.putImageData(data, 0, 0);
  return c;
}

function draw() {
  if (!state.base) return;
  const canvas = $("canvas");
  const ctx = canvas.getContext("2d");
  canvas.width = state.base.naturalWidth;
  canvas.height = state.base.naturalHeight;
  ctx.globalAlpha = 1;
  ctx.drawImage(state.base, 0, 0);
  if (state.tint && $("show-mask").checked) {
    ctx.globalAlpha = Number($("opacity").value) / 100;
    ctx.drawImage(state.tint, 0, 0);
    ctx.globalAlpha = 1;
  }
}

function base64ToBlobUrl(b64, type) {
  const bin = atob(b64);
  const bytes = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
  const url = URL.createObjectURL(new Blob([bytes], { type }));
  state.objectUrls.push(url);
  return url;
}

function showFindings(r) {
  const f = r.findings;
  const verdict = $("verdict");
  verdict.textContent = f.pneumothorax ? "Pneumothorax suspected" : "No pneumothorax detected";
  verdict.className = "verdict " + (f.pneumothorax ? "positive" : "negative");
  // The calibrated probability where the model has a calibrator; else the raw score, said so.
  const calibrated = f.calibrated_probability !== null && f.calibrated_probability !== undefined;
  const shown = calibrated ? f.calibrated_probability : f.probability;
  $("probability").textContent = fmt(shown, 3);
  $("probability-bar").style.width = `${Math.round(100 * shown)}%`;
  $("probability-note").textContent = calibrated
    ? `Calibrated probability (${f.calibration}); raw model score ${fmt(f.probability, 3)}.`
    : `Raw model score (highest pixel probability), not a calibrated probability: ${f.calibration || "this model has no calibrator"}.`;
  const cm2 = f.area_cm2 === null || f.area_cm2 === undefined
    ? "cm² n/a (no pixel spacing)" : `${fmt(f.area_cm2, 2)} cm²`;
  $("area").textContent = `${f.area_px.toLocaleString()} px · ${cm2}`;
  $("side").textContent = f.side ? `patient's ${f.side}` : (f.pneumothorax ? "not determinable" : "—");
  $("size-estimate").textContent = describeSize(f);
  $("size-note").textContent = f.pneumothorax && f.size_est_method ? `Size: ${f.size_est_method}.` : "";
  $("bbox").textContent = f.bbox ? f.bbox.join(", ") : "—";
  $("operating-point").textContent =
    `${f.operating_point_name || "default"}: ${describeOperatingPoint(f.operating_point)}`;
  const inp = r.input;
  const spacing = inp.pixel_spacing_mm ? ` · ${inp.pixel_spacing_mm.map((s) => fmt(s, 3)).join("×")} mm` : "";
  $("image-info").textContent =
    `${inp.kind.toUpperCase()} · ${inp.width}×${inp.height}${inp.view_position ? " · " + inp.view_position : ""}${spacing}`;
  $("side-note").textContent = f.side_convention || "";
  const warns = inp.header_warnings || [];
  $("header-warnings").textContent = warns.length ? `DICOM header: ${warns.join("; ")}` : "";
  $("header-warnings").hidden = warns.length === 0;
  $("request-id").textContent = r.request_id;

  const stem = `ptxseg-${r.request_id}`;
  $("dl-mask").href = r.mask.png;
  $("dl-mask").download = `${stem}-mask.png`;
  $("dl-overlay").href = r.overlay_png;
  $("dl-overlay").download = `${stem}-overlay.png`;
  const json = { request_id: r.request_id, findings: f, mask_rle: r.mask.rle, input: inp };
  $("dl-json").href = URL.createObjectURL(new Blob([JSON.stringify(json, null, 2)], { type: "application/json" }));
  state.objectUrls.push($("dl-json").href);
  $("dl-json").download = `${stem}-findings.json`;
  $("dl-seg").hidden = !(r.seg && r.seg.base64);
  if (r.seg && r.seg.base64) {
    $("dl-seg").href = base64ToBlobUrl(r.seg.base64, r.seg.media_type);
    $("dl-seg").download = r.seg.filename;
  }
  $("seg-note").textContent = r.seg && r.seg.error ? r.seg.error : "";
  $("seg-note").hidden = !(r.seg && r.seg.error);
  $("placeholder").hidden = true;
  $("results").hidden = false;
}

function reset() {
  state.objectUrls.forEach((u) => URL.revokeObjectURL(u));
  Object.assign(state, { base: null, tint: null, result: null, objectUrls: [] });
  $("error").hidden = true;
  $("results").hidden = true;
  $("placeholder").hidden = false;
  $("stage").hidden = true;
  $("controls").hidden = true;
  $("dropzone").hidden = false;
  $("file").value = "";
}

async function analyse(file) {
  reset();
  if (state.maxMb && file.size > state.maxMb * 1048576) {
    // Refused here: a server that stops reading a large upload can look like a network error.
    const size = (file.size / 1048576).toFixed(1);
    showError(`The file is ${size} MB, larger than this server's upload limit of ${state.maxMb} MB. ` +
      "Choose a single chest X-ray (DICOM, PNG or JPEG).");
    return;
  }
  $("dropzone").hidden = true;
  $("stage").hidden = false;
  $("busy").hidden = false;
  const form = new FormData();
  form.append("file", file);
  let response, body;
  try {
    response = await fetch("/v1/predict?include=image,overlay,mask,seg", { method: "POST", body: form });
    body = await response.json().catch(() => null);
  } catch (err) {
    body = null;
    response = null;
  }
  $("busy").hidden = true;
  if (!response || !response.ok || !body) {
    const message = body && body.detail
      ? (typeof body.detail === "string" ? body.detail : JSON.stringify(body.detail))
      : response
        ? `The server answered ${response.status} ${response.statusText}.`
        : "The server could not be reached. Check that ptxseg serve is running.";
    $("stage").hidden = true;
    $("dropzone").hidden = false;
    showError(message, body && body.request_id);
    return;
  }
  try {
    const [base, mask] = await Promise.all([loadImage(body.image_png), loadImage(body.mask.png)]);
    state.base = base;
    state.tint = tintMask(mask);
    state.result = body;
    draw();
    showFindings(body);
    $("controls").hidden = false;
  } catch (err) {
    showError(err.message, body.request_id);
  }
}

async function loadModelCard() {
  try {
    const card = await (await fetch("/v1/model")).json();
    const facts = $("model-facts");
    const rows = [
      ["Encoder", card.encoder],
      ["Input", card.input_size ? card.input_size.join("×") : null],
      ["Runtime", card.runtime ? [card.runtime.runtime, card.runtime.precision].filter(Boolean).join(" · ") : null],
    ];
    const v = card.validation || {};
    const dice = v.competition_dice ?? v.dice ?? v.val_dice;
    if (dice !== undefined && dice !== null) rows.push(["Validation Dice", fmt(dice, 3)]);
    // The test evaluation of the model card, each number with its 95% interval.
    const withCi = (e) => e && e.value !== null && e.value !== undefined
      ? `${fmt(e.value, 3)}${e.ci_low !== null && e.ci_low !== undefined ? ` [${fmt(e.ci_low, 3)}, ${fmt(e.ci_high, 3)}]` : ""}`
      : null;
    const ev = card.evaluation || {};
    const m = ev.metrics || {};
    const on = ev.split ? ` (${ev.split}, n=${(ev.counts || {}).n_images})` : "";
    rows.push([`Competition Dice${on}`, withCi(m.dice_per_image)]);
    rows.push(["Sensitivity", withCi(m.sensitivity)]);
    rows.push(["Specificity", withCi(m.specificity)]);
    rows.push(["Operating point", card.operating_point_name]);
    rows.push(["Calibration", card.calibrator]);
    for (const [k, val] of rows) {
      if (val === null || val === undefined || val === "") continue;
      const dt = document.createElement("dt");
      dt.textContent = k;
      const dd = document.createElement("dd");
      dd.textContent = val;
      facts.append(dt, dd);
    }
    if (card.max_upload_mb) {
      state.maxMb = card.max_upload_mb;
      $("limit").textContent = card.max_upload_mb;
    }
    if (card.uploads_kept) {
      $("storage-note").textContent = "This server keeps a copy of uploaded images (configured by its administrator).";
    }
  } catch (err) {
    $("model-facts").textContent = "Model card unavailable.";
  }
}

function setup() {
  const drop = $("dropzone");
  const input = $("file");
  $("choose").addEventListener("click", () => input.click());
  drop.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); }
  });
  input.addEventListener("change", () => { if (input.files.length) analyse(input.files[0]); });
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => {
    e.preventDefault(); drop.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => {
    e.preventDefault(); drop.classList.remove("over");
  }));
  drop.addEventListener("drop", (e) => {
    const files = e.dataTransfer && e.dataTransfer.files;
    if (files && files.length) analyse(files[0]);
  });
  // Dropping a file anywhere else must not make the browser navigate away from the page.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
  $("show-mask").addEventListener("change", draw);
  $("opacity").addEventListener("input", () => {
    $("opacity-value").textContent = `${$("opacity").value}%`;
    draw();
  });
  $("another").addEventListener("click", reset);
  loadModelCard();
}

document.addEventListener("DOMContentLoaded", setup);
