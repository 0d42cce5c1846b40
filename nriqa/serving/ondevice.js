// Scoring on this device: the exported model (model.onnx and model.json from the stored model's
// portable/ folder, nriqa.model.export) run by onnxruntime-web's WebAssembly build, all fetched
// from this page's own origin. The image is decoded, cropped and scored in the browser and never
// sent anywhere. The answer has the shape of the service's /score answer with map=true
// (nriqa.serving.responses.Score), so the page shows both the same way. Each step follows the
// Python code named beside it, to the rounding, so both give the same numbers.

const HERE = new URL(".", import.meta.url);  // the page's folder, /ui/
const RUNTIME = new URL("runtime/", HERE);   // webpage.RUNTIME_FILES
const PORTABLE = new URL("portable/", HERE); // webpage.PORTABLE_FILES
const MODEL_FILE = "model.onnx";
const CROPS_PER_RUN = 16;  // crops per model call: bounds the runtime's memory on large images
const PREVIEW_SIDE = 1024; // longest side of the preview, as nriqa.serving.webpage.PREVIEW_SIDE
// The first bytes of each format read (nriqa.core.imaging.IMAGE_FORMATS), checked before the
// browser decodes anything: it would decode GIF and others, which the server refuses.
const SIGNATURES = [[0xff, 0xd8, 0xff], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a],
                    [0x42, 0x4d], [0x49, 0x49, 0x2a, 0x00], [0x4d, 0x4d, 0x00, 0x2a]];

async function fetchOk(url) {
  const response = await fetch(url);
  if (!response.ok) throw new Error(`${url.pathname} answered ${response.status}`);
  return response;
}

async function sha256Hex(bytes) {
  const digest = await crypto.subtle.digest("SHA-256", bytes);
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

// The runtime, the exported model and its description; throws an Error saying why scoring on
// this device cannot work here (the page then scores on the server and says so). `config` is
// the page's (nriqa.serving.webpage.page_config).
export async function loadDeviceScorer(config) {
  const settings = config.on_device;
  if (settings.unavailable) throw new Error(settings.unavailable);
  const info = await (await fetchOk(new URL("model.json", PORTABLE))).json();
  if (info.format !== settings.portable_format) {
    throw new Error(`the exported model is in format ${info.format}; this page reads ` +
                    `${settings.portable_format}`);
  }
  if (info.preprocessing.mode !== "native") {
    // Pillow's bicubic resize, which the server applies first, is not what a canvas does.
    throw new Error(`this model resizes each image first (preprocess.mode ` +
                    `${info.preprocessing.mode}), which the browser cannot do as the server does`);
  }
  const unknown = info.distortion_types.filter((name) => !(name in settings.type_numbers));
  if (unknown.length) throw new Error(`the exported model names unknown types (${unknown})`);
  let ort;
  try {
    ort = await import(new URL("ort.wasm.min.mjs", RUNTIME).href);
  } catch (error) {
    throw new Error(`the WebAssembly runtime did not load (${error.message})`);
  }
  ort.env.wasm.wasmPaths = RUNTIME.href;  // its .mjs and .wasm from here, not a CDN
  // Several threads need SharedArrayBuffer, which only a cross-origin isolated page has (the
  // service does not isolate it: one thread was the faster on small crops).
  ort.env.wasm.numThreads = self.crossOriginIsolated
    ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
  const bytes = new Uint8Array(await (await fetchOk(new URL(MODEL_FILE, PORTABLE))).arrayBuffer());
  // A truncated or stale download is refused, as nriqa.model.portable.read_info refuses it.
  // (crypto.subtle exists on https and localhost pages only.)
  if (globalThis.crypto && crypto.subtle) {
    const expected = info.files[MODEL_FILE].sha256;
    if (await sha256Hex(bytes) !== expected) {
      throw new Error(`${MODEL_FILE} is not the file model.json describes (sha256)`);
    }
  }
  let runner;
  try {
    runner = await ort.InferenceSession.create(bytes, {executionProviders: ["wasm"]});
  } catch (error) {
    throw new Error(`the WebAssembly runtime could not start the model (${error.message || error})`);
  }
  return new DeviceScorer(ort, runner, info, config, bytes.length);
}

// numpy's round (half to even), as np.linspace(...).round() thins the crop grid.
function roundHalfEven(x) {
  const rounded = Math.round(x);
  return Math.abs(x % 1) === 0.5 && rounded % 2 !== 0 ? rounded - 1 : rounded;
}

// nriqa.core.imaging._positions: every `stride`, then the far edge too.
function positions(length, crop, stride) {
  const last = Math.max(0, length - crop);
  const found = [];
  for (let position = 0; position <= last; position += stride) found.push(position);
  if (found[found.length - 1] !== last) found.push(last);
  return found;
}

// nriqa.core.imaging.evenly_spaced: `count` of `items`, evenly spaced, as np.linspace(0, n - 1,
// count).round() picks them: i * step, the last one exactly n - 1 (one alone: the first).
function evenly(items, count) {
  const step = count > 1 ? (items.length - 1) / (count - 1) : 0;
  return Array.from({length: count}, (_, i) =>
    items[i > 0 && i === count - 1 ? items.length - 1 : roundHalfEven(i * step)]);
}

// nriqa.core.imaging._thinned_shape: the most cells, at most maxCrops, of a rows x columns
// grid, in the shape most like it (on a tie, fewer rows); integers only, as in Python.
function thinnedShape(rows, columns, maxCrops) {
  const skew = (r, c) => [Math.max(c * rows, r * columns), Math.min(c * rows, r * columns)];
  let best = [1, Math.min(columns, maxCrops)];
  for (let r = 2; r <= rows; r++) {
    const c = Math.min(columns, Math.floor(maxCrops / r));
    if (c === 0) break;
    const [n1, d1] = skew(r, c);
    const [n2, d2] = skew(...best);
    if (r * c > best[0] * best[1] || (r * c === best[0] * best[1] && n1 * d2 < n2 * d1)) {
      best = [r, c];
    }
  }
  return best;
}

// nriqa.core.imaging.grid_corners: the grid row by row; past max_crops, evenly spaced rows and
// columns of it.
export function gridCorners(height, width, {crop_size, stride, max_crops}) {
  let tops = positions(height, crop_size, stride);
  let lefts = positions(width, crop_size, stride);
  if (tops.length * lefts.length > max_crops) {
    const [rows, columns] = thinnedShape(tops.length, lefts.length, max_crops);
    tops = evenly(tops, rows);
    lefts = evenly(lefts, columns);
  }
  return tops.flatMap((top) => lefts.map((left) => [top, left]));
}

// Where row (or column) `index` of a padded crop comes from: numpy's "symmetric" padding of a
// side shorter than the crop, `before` pixels before it (nriqa.core.imaging.pad_to_crop).
function reflected(index, before, length) {
  const period = 2 * length;
  const j = (((index - before) % period) + period) % period;
  return j < length ? j : period - 1 - j;
}

function looksLikeAnImage(head) {
  const starts = (signature) => signature.every((byte, i) => head[i] === byte);
  const webp = String.fromCharCode(...head.slice(0, 4)) === "RIFF"
    && String.fromCharCode(...head.slice(8, 12)) === "WEBP";
  return webp || SIGNATURES.some(starts);
}

class DeviceScorer {
  constructor(ort, runner, info, config, modelBytes) {
    Object.assign(this, {ort, runner, info, config, modelBytes});
    this.settings = config.on_device;
    this.inputName = info.input.name;
    this.outputName = runner.outputNames[0];
  }

  // The image as nriqa.core.imaging.decode_image gives it: RGB bytes, upright as its EXIF says,
  // transparency composited on white; and the formats and sizes it refuses, with its messages.
  async decode(file) {
    const name = file.name;
    if (file.size === 0) throw new Error(`${name}: the file is empty (0 bytes)`);
    const head = new Uint8Array(await file.slice(0, 12).arrayBuffer());
    if (!looksLikeAnImage(head)) {
      throw new Error(`${name}: not an image in a format we read (${this.settings.format_names})`);
    }
    let bitmap;
    try {
      // No colour management, as Pillow does none; alpha kept apart, composited below.
      bitmap = await createImageBitmap(file, {imageOrientation: "from-image",
        premultiplyAlpha: "none", colorSpaceConversion: "none"});
    } catch (error) {
      throw new Error(`${name}: this browser cannot decode this image (${error.message}); ` +
                      `switch off "score on this device" to have the server score it`);
    }
    const {width, height} = bitmap;
    const minSide = this.settings.min_side;
    if (Math.min(width, height) < minSide) {
      bitmap.close();
      throw new Error(`${name}: ${width}x${height} is too small to judge; both sides must be at ` +
                      `least ${minSide} pixels`);
    }
    const canvas = new OffscreenCanvas(width, height);
    const context = canvas.getContext("2d", {willReadFrequently: true});
    context.drawImage(bitmap, 0, 0);
    bitmap.close();
    const rgba = context.getImageData(0, 0, width, height).data;
    const rgb = new Uint8Array(width * height * 3);
    for (let p = 0, q = 0; p < rgba.length; p += 4, q += 3) {
      const alpha = rgba[p + 3];
      for (let c = 0; c < 3; c++) {
        // On white, rounded as nriqa.core.imaging._on_white rounds (Pillow's alpha_composite).
        rgb[q + c] = alpha === 255 ? rgba[p + c]
          : Math.floor((rgba[p + c] * alpha + 255 * (255 - alpha) + 127) / 255);
      }
    }
    return {width, height, rgb};
  }

  // The crops of nriqa.core.imaging.grid_crops as float32 NHWC values 0..255, the model's input.
  crops({width, height, rgb}, corners) {
    const size = this.info.preprocessing.crop_size;
    const data = new Float32Array(corners.length * size * size * 3);
    const padTop = Math.floor(Math.max(0, size - height) / 2);
    const padLeft = Math.floor(Math.max(0, size - width) / 2);
    let k = 0;
    for (const [top, left] of corners) {
      for (let y = 0; y < size; y++) {
        const row = height < size ? reflected(y, padTop, height) : top + y;
        for (let x = 0; x < size; x++) {
          const column = width < size ? reflected(x, padLeft, width) : left + x;
          const source = 3 * (row * width + column);
          data[k++] = rgb[source]; data[k++] = rgb[source + 1]; data[k++] = rgb[source + 2];
        }
      }
    }
    return data;
  }

  // One row of model outputs per crop: the crop's MOS, then the type head's logits.
  async outputs(crops, count) {
    const size = this.info.preprocessing.crop_size;
    const columns = this.info.columns.length;
    const values = new Float32Array(count * columns);
    const perCrop = size * size * 3;
    for (let start = 0; start < count; start += CROPS_PER_RUN) {
      const n = Math.min(CROPS_PER_RUN, count - start);
      const input = new this.ort.Tensor("float32",
        crops.subarray(start * perCrop, (start + n) * perCrop), [n, size, size, 3]);
      const result = await this.runner.run({[this.inputName]: input});
      const output = result[this.outputName];
      if (output.data.length !== n * columns) {
        throw new Error(`the exported model gave ${output.dims} for ${n} crops; model.json ` +
                        `names ${columns} columns`);
      }
      values.set(output.data, start * columns);
      input.dispose(); output.dispose();
    }
    return values;
  }

  // The /score answer for one file, with the quality map, the preview (an object URL of the
  // decoded pixels, or none), and how long decoding, cropping and scoring took here, and the
  // model's part of it.
  async score(file, {preview = true} = {}) {
    const started = performance.now();
    const image = await this.decode(file);
    const corners = gridCorners(image.height, image.width, this.info.preprocessing);
    const crops = this.crops(image, corners);
    const modelStarted = performance.now();
    const outputs = await this.outputs(crops, corners.length);
    const result = this.answer(outputs, corners, image);
    const finished = performance.now();
    return {result, milliseconds: finished - started, modelMilliseconds: finished - modelStarted,
            preview: preview ? await previewUrl(image) : null};
  }

  // nriqa.model.prediction.score_crop_sets and nriqa.serving.api.UploadScorer.answer: the MOS is
  // the mean of the crops' MOS, the type probabilities the softmax of their mean logits; sums
  // and means in float32, as numpy takes them.
  answer(outputs, corners, {width, height}) {
    const columns = this.info.columns.length, count = corners.length;
    const sums = new Float32Array(columns);
    for (let i = 0; i < count; i++) {
      for (let c = 0; c < columns; c++) sums[c] += outputs[i * columns + c];
    }
    const means = sums.map((sum) => sum / count);
    const mos = means[0];
    const cropScores = corners.map((_, i) => outputs[i * columns]);
    const [distortions, note] = columns > 1 ? this.likelyDistortions(means.subarray(1)) : [null, null];
    return {
      mos: round(mos, 6),
      category: this.category(mos),
      distortions,
      distortion_note: note,
      model_version: this.config.model_version,
      mlflow_run_id: this.config.mlflow_run_id,
      quality_map: qualityMap(width, height, corners, this.info.preprocessing.crop_size, cropScores),
    };
  }

  // nriqa.core.categories.categorize: the best category whose (inclusive) lower bound the MOS
  // reaches, else the catch-all last one.
  category(mos) {
    const categories = this.config.categories;
    const reached = categories.slice(0, -1).find(([, bound]) => mos >= bound);
    return (reached || categories[categories.length - 1])[0];
  }

  // nriqa.model.prediction.likely_distortions over the softmax of the mean logits: the likeliest
  // types when one stands out (distortion_stands_out), else none and the note saying so.
  likelyDistortions(logits) {
    const top = Math.max(...logits);
    const exps = logits.map((logit) => Math.fround(Math.exp(logit - top)));
    const total = exps.reduce((a, b) => Math.fround(a + b), 0);
    const probabilities = Array.from(exps, (e) => Math.fround(e / total));
    const rule = this.settings.distortions;
    const typeOf = (k) => this.settings.type_numbers[this.info.distortion_types[k]];
    const order = probabilities.map((_, k) => k).sort((a, b) => probabilities[b] - probabilities[a]);
    const likeliest = probabilities.indexOf(Math.max(...probabilities));  // np.argmax: the first
    const best = probabilities[likeliest];
    if (typeOf(likeliest) === 0 || best < rule.min_probability
        || best < rule.min_times_uniform / probabilities.length) {
      return [[], rule.note];
    }
    return [order.slice(0, rule.listed).map((k) => ({
      type: typeOf(k), name: this.info.distortion_types[k], probability: round(probabilities[k], 4),
    })), null];
  }
}

// Python's round(x, digits) for the values shown (the last digit may differ at exact ties).
function round(value, digits) {
  const scale = 10 ** digits;
  return Math.round(value * scale) / scale;
}

// nriqa.serving.quality_map.quality_map: the crop scores on their grid, null where thinned.
function qualityMap(width, height, corners, cropSize, cropScores) {
  const tops = [...new Set(corners.map(([top]) => top))].sort((a, b) => a - b);
  const lefts = [...new Set(corners.map(([, left]) => left))].sort((a, b) => a - b);
  const scores = tops.map(() => lefts.map(() => null));
  corners.forEach(([top, left], i) => {
    scores[tops.indexOf(top)][lefts.indexOf(left)] = round(cropScores[i], 6);
  });
  return {width, height, crop_size: cropSize, tops, lefts, scores};
}

// A PNG of the pixels scored, at most PREVIEW_SIDE on its longest side, as an object URL.
async function previewUrl({width, height, rgb}) {
  const full = new OffscreenCanvas(width, height);
  const pixels = new ImageData(width, height);
  for (let p = 0, q = 0; q < rgb.length; p += 4, q += 3) {
    pixels.data[p] = rgb[q]; pixels.data[p + 1] = rgb[q + 1]; pixels.data[p + 2] = rgb[q + 2];
    pixels.data[p + 3] = 255;
  }
  full.getContext("2d").putImageData(pixels, 0, 0);
  const scale = Math.min(1, PREVIEW_SIDE / Math.max(width, height));
  let shown = full;
  if (scale < 1) {
    shown = new OffscreenCanvas(Math.round(width * scale), Math.round(height * scale));
    shown.getContext("2d").drawImage(full, 0, 0, shown.width, shown.height);
  }
  return URL.createObjectURL(await shown.convertToBlob({type: "image/png"}));
}
