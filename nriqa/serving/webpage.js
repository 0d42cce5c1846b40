// The web page's script (webpage.html): scores with the service's API, or on this device
// (ondevice.js), and shows either answer the same way.
import {loadDeviceScorer} from "./ondevice.js";

const config = JSON.parse(document.getElementById("config").textContent);
const [LOW, HIGH] = config.scale;
const $ = (id) => document.getElementById(id);
// The page's own routes (/ui/), whether it was opened as /ui or /ui/.
const BASE = new URL(".", import.meta.url).pathname;

// Colours along the heat map's ramp (the same stops as nriqa.serving.quality_map.RAMP).
function rampColour(mos) {
  const ramp = config.ramp, value = Math.min(HIGH, Math.max(LOW, mos));
  for (let i = 1; i < ramp.length; i++) {
    const [m0, c0] = ramp[i - 1], [m1, c1] = ramp[i];
    if (value <= m1) {
      const t = (value - m0) / (m1 - m0);
      return c0.map((c, k) => Math.round(c + t * (c1[k] - c)));
    }
  }
  return ramp[ramp.length - 1][1];
}
const css = (rgb) => `rgb(${rgb.join(",")})`;
const percent = (mos) => `${(100 * (mos - LOW) / (HIGH - LOW)).toFixed(2)}%`;

// Categories best first, each with its band [lower bound, upper bound) and the ramp's colour there.
const categories = config.categories.map(([name, low], i, all) => {
  const high = i === 0 ? HIGH : all[i - 1][1];
  return {name, low, high, colour: css(rampColour((low + high) / 2))};
});

function ticks(element, values) {
  element.replaceChildren(...values.map((value) => {
    const tick = document.createElement("span");
    tick.style.left = percent(value);
    tick.textContent = value;
    return tick;
  }));
}

function setUp() {
  const info = [`Model version ${config.model_version || "(unregistered)"}`,
                `MLflow run ${config.mlflow_run_id || "(none)"}`, config.model_tag];
  $("model-info").textContent = info.join(" · ");
  $("scale").textContent = `MOS on the ${LOW}–${HIGH} scale`;
  for (const band of [...categories].reverse()) {
    const part = document.createElement("div");
    part.className = "band";
    part.title = band.name;
    part.style.background = band.colour;
    part.style.width = percent(band.high - band.low + LOW);
    $("gauge").insertBefore(part, $("gauge-marker"));
  }
  const bounds = [LOW, ...categories.map((c) => c.low).filter((b) => b > LOW).reverse(), HIGH];
  ticks($("gauge-ticks"), bounds);
  ticks($("legend-ticks"), bounds);
  const stops = config.ramp.map(([mos, rgb]) => `${css(rgb)} ${percent(mos)}`);
  $("legend-bar").style.background = `linear-gradient(to right, ${stops.join(", ")})`;
  for (const example of config.examples) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "example";
    button.title = example.title;
    const thumbnail = document.createElement("img");
    thumbnail.src = `${BASE}examples/${example.file}`;
    thumbnail.alt = example.title;
    button.append(thumbnail, example.title);
    button.addEventListener("click", async () => {
      const response = await fetch(`${BASE}examples/${example.file}`);
      const blob = await response.blob();
      scoreOne(new File([blob], example.file, {type: "image/png"}));
    });
    $("examples").append(button);
  }
  $("examples").hidden = config.examples.length === 0;
}

// POST to the API. It answers bad input with {"error": "..."}; anything else, no answer
// included, still becomes a sentence.
async function post(url, body) {
  let response;
  try {
    response = await fetch(url, {method: "POST", body});
  } catch (error) {  // fetch() fails only when no answer came at all
    throw new Error(`The service could not be reached (${error.message}); is it still running?`);
  }
  return readAnswer(response);
}

async function readAnswer(response) {
  const text = await response.text();
  let body = null;
  try { body = JSON.parse(text); } catch (_) { /* not JSON: a proxy's page, a crash */ }
  if (response.ok && body !== null) return body;
  const message = body && body.error ? body.error
    : `the server answered ${response.status} ${response.statusText}: ${text.slice(0, 300)}`;
  throw new Error(message);
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

function showNotice(message) {
  $("notice").textContent = message;
  $("notice").hidden = !message;
}

function clearResults() {
  showError("");
  $("single").hidden = $("score").hidden = $("map-controls").hidden = $("batch").hidden = true;
  const shown = $("preview").getAttribute("src");
  if (shown && shown.startsWith("blob:")) URL.revokeObjectURL(shown);
  $("preview").removeAttribute("src");
  $("status").textContent = $("scored-by").textContent = "";
  lastMap = null;
}

let lastMap = null;

// --- Scoring on this device ------------------------------------------------------------------
// While the box is ticked, `device` is the promise of the loaded scorer (null once it failed).
let device = null;

function useDevice(wanted) {
  showNotice("");
  $("device-status").textContent = "";
  device = wanted ? loadDevice() : null;
}

async function loadDevice() {
  $("device-status").textContent = "Loading the model and its runtime into this browser…";
  try {
    const scorer = await loadDeviceScorer(config);
    $("device-status").textContent =
      `Ready: the model (${kilobytes(scorer.modelBytes)}) runs here; images stay on this device.`;
    return scorer;
  } catch (error) {
    fallBack(error.message);
    return null;
  }
}

// Scoring on the device cannot work here: say why, and score on the server from now on.
function fallBack(reason) {
  $("on-device").checked = false;
  $("device-status").textContent = "";
  device = null;
  showNotice(`Scoring on this device is not available: ${reason}. ` +
             "Images are scored on the server instead.");
}

const kilobytes = (bytes) => bytes >= 1e6 ? `${(bytes / 1e6).toFixed(1)} MB` : `${Math.round(bytes / 1e3)} kB`;

// The scorer on this device when the box is ticked and it loaded; null to score on the server.
async function deviceScorer() {
  return $("on-device").checked && device ? await device : null;
}

// --- One image ---------------------------------------------------------------------------------

async function scoreOne(file) {
  clearResults();
  $("status").textContent = `Scoring ${file.name}…`;
  const scorer = await deviceScorer();  // waits for the model while it loads
  if (scorer) $("status").textContent = `Scoring ${file.name} on this device…`;
  try {
    const {result, preview, scoredBy} = scorer ? await scoreHere(scorer, file) : await scoreOnServer(file);
    if (preview) {
      $("preview").src = preview;
      await $("preview").decode();
    }
    $("single").hidden = false;
    showScore(result);
    $("scored-by").textContent = scoredBy;
    lastMap = result.quality_map;
    drawMap();
    $("map-controls").hidden = !lastMap;
    $("status").textContent = "";
  } catch (error) {
    clearResults();
    showError(error.message);
  }
}

async function scoreOnServer(file) {
  const form = new FormData();
  form.append("image", file, file.name);
  form.append("map", "true");
  const preview = fetch(`${BASE}preview?name=${encodeURIComponent(file.name)}`, {method: "POST", body: file})
    .then(async (response) => response.ok ? URL.createObjectURL(await response.blob()) : null)
    .catch(() => null);
  const result = await post("/score", form);
  return {result, preview: await preview, scoredBy: `${file.name}: scored on the server.`};
}

async function scoreHere(scorer, file) {
  const {result, preview, milliseconds, modelMilliseconds} = await scorer.score(file);
  return {result, preview,
          scoredBy: `${file.name}: scored on this device in ${Math.round(milliseconds)} ms (the ` +
                    `model ${Math.round(modelMilliseconds)} ms); the image was not uploaded.`};
}

function showScore(result) {
  const category = categories.find((c) => c.name === result.category);
  $("mos").textContent = result.mos.toFixed(2);
  $("mos").title = `${result.mos}`;
  $("answer-json").textContent = JSON.stringify(result, null, 1);
  $("category").textContent = result.category;
  $("category").style.background = category ? category.colour : "#ddd";
  $("gauge-marker").style.left = percent(Math.min(HIGH, Math.max(LOW, result.mos)));
  const list = $("distortion-list");
  list.replaceChildren();
  // A model without the distortion-type head gives null: the space is left out, not faked.
  // When no distortion stands out, the list is empty and the API's note says so.
  for (const distortion of result.distortions || []) {
    const item = document.createElement("li");
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${Math.round(120 * distortion.probability)}px`;
    item.append(`${distortion.name}: ${Math.round(100 * distortion.probability)}%`, bar);
    list.append(item);
  }
  const note = result.distortion_note || "";
  $("distortion-note").textContent = note && `${note[0].toUpperCase()}${note.slice(1)}.`;
  $("distortion-note").hidden = !note;
  list.hidden = !list.children.length;
  $("distortions").hidden = !result.distortions;
  $("score").hidden = false;
}

// Each pixel gets the score of the nearest scored crop, as nriqa.serving.quality_map.map_values
// gives it: the mean of the scored crops covering it, else of the nearest one within the map's
// reach (map_reach); farther away it is left unpainted. A thinned grid is then not striped.
function drawMap() {
  const canvas = $("heatmap"), image = $("preview");
  canvas.hidden = !lastMap || !$("show-map").checked;
  if (canvas.hidden || !image.complete || !image.clientWidth) return;
  const width = image.clientWidth, height = image.clientHeight;
  canvas.width = width; canvas.height = height;
  canvas.style.width = `${width}px`; canvas.style.height = `${height}px`;
  const size = lastMap.crop_size, crops = [];
  lastMap.tops.forEach((top, i) => lastMap.lefts.forEach((left, j) => {
    const score = lastMap.scores[i][j];
    if (score !== null) crops.push({top, left, score});
  }));
  const reach = config.map_reach_spacings * Math.sqrt(lastMap.width * lastMap.height / crops.length);
  // Along one axis, from a pixel centre to a crop's square, in frame pixels.
  const squaredGap = (centre, start) => Math.max(start - centre, centre - (start + size), 0) ** 2;
  const pixels = new ImageData(width, height);
  for (let y = 0; y < height; y++) {
    const frameY = (y + 0.5) * lastMap.height / height;
    for (let x = 0; x < width; x++) {
      const frameX = (x + 0.5) * lastMap.width / width;
      let nearest = Infinity, total = 0, count = 0;
      for (const crop of crops) {
        const distance = squaredGap(frameY, crop.top) + squaredGap(frameX, crop.left);
        if (distance < nearest) {
          nearest = distance; total = crop.score; count = 1;
        } else if (distance === nearest) {
          total += crop.score; count += 1;
        }
      }
      if (nearest > reach * reach) continue;
      const [r, g, b] = rampColour(total / count);
      pixels.data.set([r, g, b, 140], 4 * (y * width + x));
    }
  }
  canvas.getContext("2d").putImageData(pixels, 0, 0);
}

let batchRows = [];

async function scoreMany(files) {
  clearResults();
  const scorer = await deviceScorer();
  if (scorer) {
    await scoreManyHere(scorer, files);
    return;
  }
  if (files.length > config.max_batch_images) {
    showError(`${files.length} files chosen; the service scores at most ${config.max_batch_images} at once.`);
    return;
  }
  $("status").textContent = `Scoring ${files.length} images…`;
  const form = new FormData();
  for (const file of files) form.append("images", file, file.name);
  try {
    const results = await post("/score_batch", form);
    batchRows = results.map((result, i) => ({file: files[i].name, ...result}));
    renderTable();
    $("batch").hidden = false;
    $("status").textContent = "";
  } catch (error) {
    clearResults();
    showError(error.message);
  }
}

// One by one, each file's error in its row as the service's score_batch gives it; no limit on
// their number, as nothing is sent.
async function scoreManyHere(scorer, files) {
  batchRows = [];
  let milliseconds = 0;
  for (const [i, file] of files.entries()) {
    $("status").textContent = `Scoring ${i + 1} of ${files.length} on this device…`;
    try {
      const scored = await scorer.score(file, {preview: false});
      milliseconds += scored.milliseconds;
      batchRows.push({file: file.name, ...scored.result});
    } catch (error) {
      batchRows.push({file: file.name, error: error.message});
    }
  }
  renderTable();
  $("batch").hidden = false;
  $("status").textContent = `Scored on this device (${Math.round(milliseconds / files.length)} ms ` +
                            "an image); no image was uploaded.";
}

function renderTable() {
  $("batch-table").querySelector("tbody").replaceChildren(...batchRows.map((row) => {
    const tr = document.createElement("tr");
    const cells = row.error === undefined
      ? [row.file, row.mos.toFixed(3), row.category]
      : [row.file, "–", row.error];
    cells.forEach((text, k) => {
      const td = document.createElement("td");
      td.textContent = text;
      if (k === 2 && row.error === undefined) {
        td.style.background = (categories.find((c) => c.name === row.category) || {}).colour || "";
      }
      if (k === 2 && row.error !== undefined) td.className = "error";
      tr.append(td);
    });
    return tr;
  }));
}

// Sorting by category sorts by quality (a category's lower bound), not alphabetically;
// images that could not be scored stay last.
function sortBy(header) {
  const key = header.dataset.key;
  const descending = header.getAttribute("aria-sort") === "ascending";
  for (const th of document.querySelectorAll("#batch-table th")) th.removeAttribute("aria-sort");
  header.setAttribute("aria-sort", descending ? "descending" : "ascending");
  const rank = (row) => key === "file" ? row.file
    : key === "mos" ? row.mos
    : -categories.findIndex((c) => c.name === row.category);
  batchRows.sort((a, b) => {
    if ((a.error === undefined) !== (b.error === undefined)) return a.error === undefined ? -1 : 1;
    const [x, y] = [rank(a), rank(b)];
    const order = x < y ? -1 : x > y ? 1 : 0;
    return descending ? -order : order;
  });
  renderTable();
}

setUp();
$("files").addEventListener("change", () => {
  const files = [...$("files").files];
  if (files.length === 1) scoreOne(files[0]);
  else if (files.length > 1) scoreMany(files);
});
$("show-map").addEventListener("change", drawMap);
$("on-device").addEventListener("change", () => useDevice($("on-device").checked));
if ($("on-device").checked) useDevice(true);  // kept ticked by the browser on a reload
window.addEventListener("resize", drawMap);
for (const th of document.querySelectorAll("#batch-table th")) th.addEventListener("click", () => sortBy(th));
