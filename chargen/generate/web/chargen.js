// chargen.js: a chargen run sampled in the browser, with no server and no dependency. `chargen export RUN --web
// DIR` writes it beside model.json (the network's shape and the vocabulary) and model.safetensors (the weights).
//
//   import { load } from "./chargen.js";
//   const model = await load("./");
//   for await (const piece of model.stream("ROMEO:", { length: 300, seed: 1 })) output.append(piece);
//   const text = await model.generate("ROMEO:", { length: 300, temperature: 0.8, top_p: 0.95, seed: 1 });
//
// The same seed and settings give the text of chargen's NumPy backend (Sampler.load(RUN, backend="numpy")):
// the same arrays (numpy_step.NumpyStep's), the same float32 cells (Math.fround after every operation), the same
// draws (draws.py: splitmix64 of the seed and the step, in BigInt) and the same pick (numpy_step.pick, in
// float64). Only the matrix products sum in another order than NumPy's BLAS, so a draw that falls within a
// rounding error of a boundary may pick the neighbouring character. The products run in WebAssembly with
// SIMD (matvec.wat, below as base64), or in plain JavaScript, to the same bits, where that is missing.

export const FORMAT = 1; // the export's format (model.json's "chargen_web_export")

const MATVEC_WASM = // scripts/build_wasm.py writes this line from matvec.wat
  "AGFzbQEAAAABCQFgBX9/f39/AAMCAQAFAwEAAQcTAgZtZW1vcnkCAAZtYXR2ZWMAAArWAgHTAgMEfwR7BH8gA0ECdCEHAkADQCAFQQRqIAFLDQEgACAFQQJ0aiEIIAgqAgD9EyEJIAgqAgT9EyEKIAgqAgj9EyELIAgqAgz9EyEMIAIgBSAHbGohDSANIAdqIQ4gDiAHaiEPIA8gB2ohEEEAIQYCQANAIAYgB08NASAEIAZqIQggCCAI/QAEACAJIA0gBmr9AAQA/eYB/eQBIAogDiAGav0ABAD95gH95AEgCyAPIAZq/QAEAP3mAf3kASAMIBAgBmr9AAQA/eYB/eQB/QsEACAGQRBqIQYMAAsLIAVBBGohBQwACwsCQANAIAUgAU8NASAAIAVBAnRqKgIA/RMhCSACIAUgB2xqIQ1BACEGAkADQCAGIAdPDQEgBCAGaiEIIAggCP0ABAAgCSANIAZq/QAEAP3mAf3kAf0LBAAgBkEQaiEGDAALCyAFQQFqIQUMAAsLCwCTAQRuYW1lAkUBABEAAXgBAW4CAXcDAW0EA291dAUBawYBagcGc3RyaWRlCAFvCQJ4MAoCeDELAngyDAJ4Mw0CcjAOAnIxDwJyMhACcjMDRQEACAAFZG9uZTQBBXJvd3M0Agpjb2xzNF9kb25lAwVjb2xzNAQFZG9uZTEFBXJvd3MxBgpjb2xzMV9kb25lBwVjb2xzMQ==";

export const OPTIONS = ["length", "temperature", "top_k", "top_p", "min_p", "stop", "seed", "unknown", "signal"];
const DEFAULTS = { length: 500, temperature: 0.8, top_k: null, top_p: null, min_p: null, stop: [], unknown: "error" };
const MAX_SEED = (1n << 63n) - 1n;
const YIELD_MS = 12; // stream and generate give the page back its event loop this often

/** A mistake in the caller's input: the message says what is wrong and what to do. */
export class ChargenError extends Error {
  constructor(message) {
    super(message);
    this.name = "ChargenError";
  }
}

/** Load the export in the folder `base` (a URL, relative to the page): model.json and model.safetensors.
 * `{ wasm: false }` uses the plain-JavaScript products even where WebAssembly SIMD works. */
export async function load(base = "./", { wasm = true } = {}) {
  base = String(base);
  const root = new URL(base.endsWith("/") ? base : base + "/", globalThis.document?.baseURI ?? import.meta.url);
  const [meta, weights] = await Promise.all([
    fetchOk(new URL("model.json", root)).then((r) => r.text()).then((text) => {
      try {
        return JSON.parse(text);
      } catch (e) {
        throw new ChargenError(`model.json cannot be read (${e.message}); copy the export's folder again`);
      }
    }),
    fetchOk(new URL("model.safetensors", root)).then((r) => r.arrayBuffer()),
  ]);
  return fromBytes(meta, weights, { wasm });
}

async function fetchOk(url) {
  const response = await fetch(url);
  if (!response.ok) throw new ChargenError(`cannot read ${url} (HTTP ${response.status}); serve the export's whole folder`);
  return response;
}

/** The model of model.json's object `meta` and model.safetensors' bytes `weights` (an ArrayBuffer). */
export async function fromBytes(meta, weights, { wasm = true } = {}) {
  if (!meta || typeof meta !== "object" || meta.chargen_web_export !== FORMAT) {
    throw new ChargenError(`model.json is not a chargen web export of format ${FORMAT}; export the run again`);
  }
  if (weights.byteLength !== meta.weights_bytes) {
    throw new ChargenError(`model.safetensors has ${weights.byteLength} bytes where model.json says ` +
      `${meta.weights_bytes}: a file is incomplete or from another export; copy the export's folder again`);
  }
  {
    const digest = globalThis.crypto?.subtle // the browser's own on secure pages (https, this machine)
      ? new Uint8Array(await crypto.subtle.digest("SHA-256", weights)) : sha256(new Uint8Array(weights));
    const hex = Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
    if (hex !== meta.weights_sha256) {
      throw new ChargenError("model.safetensors is not the one model.json was written with; copy the export's folder again");
    }
  }
  let tensors;
  try {
    tensors = readSafetensors(weights);
  } catch (e) {
    if (e instanceof ChargenError) throw e;
    throw new ChargenError(`model.safetensors cannot be read (${e.message}); export the run again`);
  }
  const plan = new Plan(meta, tensors);
  let kernel = null;
  try {
    kernel = (wasm && MATVEC_WASM ? await wasmKernel(plan.size) : null) ?? jsKernel(plan.size);
  } catch (e) {
    throw new ChargenError(`the model needs ${Math.ceil(plan.size * 4 / 1e6)} MB of memory, which this page did not get (${e.message})`);
  }
  return new Model(meta, plan, kernel);
}

/** name -> { dtype, shape, data } of a safetensors file: an 8-byte little-endian header length, the JSON
 * header, the data. */
export function readSafetensors(buffer) {
  const view = new DataView(buffer);
  const n = Number(view.getBigUint64(0, true));
  const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 8, n)));
  const out = {};
  for (const [name, t] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const [begin, end] = t.data_offsets;
    const bytes = buffer.slice(8 + n + begin, 8 + n + end); // a copy: aligned for the typed array
    const Kind = { F32: Float32Array, I32: Int32Array }[t.dtype];
    if (!Kind) throw new ChargenError(`model.safetensors holds ${t.dtype} for ${name}; export the run again`);
    out[name] = { shape: t.shape, data: new Kind(bytes) };
  }
  return out;
}

// -- the products ------------------------------------------------------------------------------------------

const pad4 = (n) => (n + 3) & ~3;

async function wasmKernel(floats) {
  const bytes = Uint8Array.from(atob(MATVEC_WASM), (c) => c.charCodeAt(0));
  if (typeof WebAssembly !== "object" || !WebAssembly.validate(bytes)) return null; // no SIMD: plain JavaScript
  const { instance } = await WebAssembly.instantiate(bytes);
  const memory = instance.exports.memory;
  const pages = Math.ceil((floats * 4) / 65536) - memory.buffer.byteLength / 65536;
  if (pages > 0) memory.grow(pages);
  const product = instance.exports.matvec;
  return {
    name: "wasm-simd",
    f: new Float32Array(memory.buffer),
    matvec: (x, n, w, m, out) => product(x * 4, n, w * 4, m, out * 4),
  };
}

function jsKernel(floats) {
  const f = new Float32Array(floats), fr = Math.fround;
  return {
    name: "javascript",
    f,
    matvec(x, n, w, m, out) { // out[j] += sum over k of x[k] w[k, j], in the order and rounding of matvec.wat
      for (let k = 0; k < n; k++) {
        const xk = f[x + k], row = w + k * m;
        for (let j = 0; j < m; j++) f[out + j] = fr(f[out + j] + fr(xk * f[row + j]));
      }
    },
  };
}

// -- where each array lives ----------------------------------------------------------------------------------

/** The float offsets of every weight and buffer in one Float32Array (the WebAssembly memory): matrices with
 * their columns padded to a multiple of 4, every array starting on 16 bytes. */
class Plan {
  constructor(meta, tensors) {
    this.size = 0;
    this.copies = [];
    const H = meta.hidden_size, L = meta.num_layers, lstm = meta.cell === "lstm";
    const G = pad4(({ lstm: 4, gru: 3, rnn: 1, mingru: 2, minlstm: 3 })[meta.cell] * H);
    if (!G) throw new ChargenError(`this chargen.js does not know the cell ${JSON.stringify(meta.cell)}; export again`);
    // The state first, in one piece: a stream saves and restores it around each character it yields, so that
    // streams taking turns on one model each keep their own.
    this.stateSize = L * pad4(H) * (lstm ? 2 : 1);
    const state = this.buffer(this.stateSize);
    this.layers = [];
    for (let k = 0; k < L; k++) {
      const layer = { h: state + k * pad4(H), gates: this.buffer(G) };
      if (meta.cell === "mingru" || meta.cell === "minlstm") { // gates on the input only: a table, or norm + product
        layer.out = this.buffer(H); // the state, plus the layer's input where the residual path adds it
        if (k === 0) {
          layer.table = this.weight(tensors, "l0.table");
          if (tensors["l0.embedding"]) layer.emb = this.weight(tensors, "l0.embedding");
        } else {
          [layer.w, layer.b] = [this.weight(tensors, `l${k}.w`), this.weight(tensors, `l${k}.b`)];
          [layer.norm_w, layer.norm_b] = [this.weight(tensors, `l${k}.norm_w`), this.weight(tensors, `l${k}.norm_b`)];
          layer.u = this.buffer(H);
        }
      } else if (meta.cell !== "gru") { // the LSTM's and the RNN's: a table or a bias, and weights over [x, h]
        if (lstm) layer.c = state + (L + k) * pad4(H);
        if (k === 0) layer.table = this.weight(tensors, "l0.table");
        else layer.b = this.weight(tensors, `l${k}.b`);
        layer.w = this.weight(tensors, k === 0 ? "l0.w_hh" : `l${k}.w`); // layers above: rows of x, then of h
      } else {
        layer.hidden = this.buffer(G);
        if (k === 0) layer.table = this.weight(tensors, "l0.table");
        else [layer.w_ih, layer.b_ih] = [this.weight(tensors, `l${k}.w_ih`), this.weight(tensors, `l${k}.b_ih`)];
        [layer.w_hh, layer.b_hh] = [this.weight(tensors, `l${k}.w_hh`), this.weight(tensors, `l${k}.b_hh`)];
      }
      this.layers.push(layer);
    }
    this.head = { w: this.weight(tensors, "head.w"), b: this.weight(tensors, "head.b") };
    this.head.out = this.buffer(this.head.w.m);
    this.logits = this.buffer(meta.vocab_size); // the adaptive softmax's, in id order
    this.tails = [];
    for (let i = 0; tensors[`tail${i}.project`]; i++) {
      const project = this.weight(tensors, `tail${i}.project`), out = this.weight(tensors, `tail${i}.out`);
      this.tails.push({ project, out, mid: this.buffer(project.m), logits: this.buffer(out.m) });
    }
    this.rank = tensors["head.rank"]?.data ?? null;
  }

  buffer(n) {
    const at = this.size;
    this.size += pad4(n);
    return at;
  }

  weight(tensors, name) {
    const t = tensors[name];
    if (!t) throw new ChargenError(`model.safetensors has no ${name}; export the run again`);
    const [rows, cols] = t.shape.length === 1 ? [1, t.shape[0]] : t.shape;
    const m = pad4(cols), at = this.buffer(rows * m);
    this.copies.push({ at, rows, cols, m, data: t.data });
    return { at, rows, cols, m };
  }

  /** Copy the weights into `f`, row by row into their padded places. */
  fill(f) {
    for (const { at, rows, cols, m, data } of this.copies) {
      for (let r = 0; r < rows; r++) f.set(data.subarray(r * cols, (r + 1) * cols), at + r * m);
    }
  }
}

// -- the model ---------------------------------------------------------------------------------------------

export class Model {
  constructor(meta, plan, kernel) {
    this.config = meta;
    this.chars = meta.chars;
    this.ids = new Map(meta.chars.map((c, i) => [c, i]));
    if (meta.unk_id !== null) this.ids.delete(meta.chars[meta.unk_id]);
    this.kernel = kernel.name; // "wasm-simd" or "javascript"
    this.f = kernel.f;
    this.matvec = kernel.matvec;
    this.plan = plan;
    plan.fill(this.f);
    this.H = meta.hidden_size;
    this.V = meta.vocab_size;
    this.x = new Float64Array(this.V); // the pick's float64 work row
    this.order = new Int32Array(this.V);
  }

  /** The ids of `text` after the corpus's normalization; characters outside the vocabulary are an error, or
   * the unknown token with unknown: "unk". */
  encode(text, unknown = "error") {
    if (typeof text !== "string") throw new ChargenError(`the prompt must be text, got ${typeof text}`);
    const norm = this.config.normalize;
    if (norm === "nfc" || norm === "nfkc") text = text.normalize(norm.toUpperCase());
    // Each character lowercased on its own, as the tokenizers library does (no final sigma from context).
    if (this.config.lowercase) text = Array.from(text, (c) => c.toLowerCase()).join("");
    const ids = [], missing = new Set();
    for (const ch of text) { // code points, as Python's str
      const id = this.ids.get(ch);
      if (id !== undefined) ids.push(id);
      else if (unknown === "unk" && this.config.unk_id !== null) ids.push(this.config.unk_id);
      else missing.add(ch);
    }
    if (missing.size) {
      const shown = [...missing].sort().slice(0, 10).map((c) => JSON.stringify(c)).join(" ");
      const more = missing.size > 10 ? ` and ${missing.size - 10} more` : "";
      const hint = this.config.unk_id !== null
        ? "pass unknown: \"unk\" to map them to the unknown token" : "remove them: this vocabulary has no unknown token";
      throw new ChargenError(`characters not in the vocabulary: ${shown}${more}; ${hint}`);
    }
    return ids;
  }

  /** Yield the continuation of `prompt` in pieces as it is drawn; joined, they equal generate's text. Text
   * that may begin a stop string is held back until it is known not to. The options are checked now. */
  stream(prompt = "", options = {}) {
    const opts = checkOptions(options);
    const ids = this.encode(prompt, opts.unknown);
    return this.#pieces(ids, opts);
  }

  /** The continuation of `prompt` (without it), as one string. */
  async generate(prompt = "", options = {}) {
    let text = "";
    for await (const piece of this.stream(prompt, options)) text += piece;
    return text;
  }

  /** The log-probabilities of the character after `prompt`, by id (model.chars[id]): an Array of V numbers. */
  nextLogProbs(prompt = "", unknown = "error") {
    const ids = this.encode(prompt, unknown);
    this.f.fill(0, 0, this.plan.stateSize);
    let logits = this.#step(this.config.start_id);
    for (const id of ids) logits = this.#step(id);
    const x = Array.from(logits), top = Math.max(...x);
    const log = Math.log(x.reduce((sum, v) => sum + Math.exp(v - top), 0));
    return x.map((v) => v - top - log);
  }

  async *#pieces(promptIds, opts) {
    const stops = opts.stop;
    let pending = "", last = now();
    for (const id of this.#draws(promptIds, opts)) {
      if (opts.signal?.aborted) return;
      pending += this.chars[id];
      if (stops.length) {
        const hit = cutAtStop(pending, stops);
        if (hit !== pending) {
          if (hit) yield hit;
          return;
        }
        const keep = partialStopSuffix(pending, stops);
        if (pending.length > keep) {
          yield pending.slice(0, pending.length - keep);
          pending = pending.slice(pending.length - keep);
        }
      } else {
        yield pending;
        pending = "";
      }
      if (now() - last > YIELD_MS) { // let the page paint and read its stop button
        await nextTask();
        last = now();
      }
    }
    if (pending && !opts.signal?.aborted) yield pending;
  }

  /** The drawn ids, one per character: numpy_step.sample_ids for one row. */
  *#draws(promptIds, opts) {
    const f = this.f, state = new Float32Array(this.plan.stateSize); // this stream's own: zeros to start
    f.set(state, 0);
    let logits = this.#step(this.config.start_id);
    for (const id of promptIds) logits = this.#step(id);
    const greedy = opts.temperature === 0 || opts.top_k === 1 || opts.min_p === 1;
    const banned = this.config.unk_id ?? -1;
    for (let t = 0; t < opts.length; t++) {
      const u = greedy ? 0 : uniform(opts.seed, t);
      const id = this.#pick(logits, u, opts, greedy, banned);
      state.set(f.subarray(0, state.length)); // another stream may step the model before this one resumes
      yield id;
      if (t + 1 < opts.length) {
        f.set(state, 0);
        logits = this.#step(id);
      }
    }
  }

  /** Read one id: the state moves on; returns the next character's logits (a view, valid until the next step). */
  #step(id) {
    const cell = this.config.cell;
    let x = -1, xn = 0; // the layer's input: the output of the layer below (layer 0 reads its table)
    for (let k = 0; k < this.plan.layers.length; k++) {
      const layer = this.plan.layers[k];
      if (cell === "lstm") this.#lstmLayer(layer, k, id, x, xn);
      else if (cell === "rnn") this.#rnnLayer(layer, k, id, x, xn);
      else if (cell === "gru") this.#gruLayer(layer, k, id, x, xn);
      else this.#minLayer(layer, k, id, x, xn, cell === "mingru");
      [x, xn] = [layer.out ?? layer.h, this.H];
    }
    return this.#output(x);
  }

  /** An LSTM's or RNN's pre-activations (n of them) into layer.gates: [x, h] @ w (the rows of x, then those of
   * h; layer 0 has no x), plus layer 0's table row for `id` or the bias above it. */
  #preActivations(layer, k, id, x, xn, n) {
    const f = this.f, g = layer.gates, G = layer.w.m, fr = Math.fround;
    f.fill(0, g, g + G);
    if (k > 0) this.matvec(x, xn, layer.w.at, G, g);
    this.matvec(layer.h, this.H, layer.w.at + xn * G, G, g);
    const add = k === 0 ? layer.table.at + id * layer.table.m : layer.b.at;
    for (let j = 0; j < n; j++) f[g + j] = fr(f[g + j] + f[add + j]);
  }

  #lstmLayer(layer, k, id, x, xn) {
    const f = this.f, H = this.H, g = layer.gates, fr = Math.fround, tanh = Math.tanh;
    this.#preActivations(layer, k, id, x, xn, 4 * H);
    const h = layer.h, c = layer.c; // numpy_cells.lstm_cell: the i, f, o columns are pre-halved
    for (let j = 0; j < H; j++) {
      const si = fr(fr(tanh(f[g + j])) * 0.5 + 0.5), sf = fr(fr(tanh(f[g + H + j])) * 0.5 + 0.5);
      const tg = fr(tanh(f[g + 2 * H + j])), so = fr(fr(tanh(f[g + 3 * H + j])) * 0.5 + 0.5);
      const cell = fr(fr(sf * f[c + j]) + fr(si * tg));
      f[c + j] = cell;
      f[h + j] = fr(so * fr(tanh(cell)));
    }
  }

  #rnnLayer(layer, k, id, x, xn) { // Elman's: h = tanh(table row or [x, h] @ w + b, with h @ w_hh)
    const f = this.f, g = layer.gates, fr = Math.fround;
    this.#preActivations(layer, k, id, x, xn, this.H);
    for (let j = 0; j < this.H; j++) f[layer.h + j] = fr(Math.tanh(f[g + j]));
  }


  /** A minGRU or minLSTM layer (numpy_cells.min_cell): gates from the input only, h = a h + b, and the layer's
   * output h plus its input where the widths agree. */
  #minLayer(layer, k, id, x, xn, gru) {
    const f = this.f, H = this.H, g = layer.gates, fr = Math.fround;
    let res = -1; // where the input added back lives, if it is
    if (k === 0) {
      const row = layer.table.at + id * layer.table.m;
      f.copyWithin(g, row, row + layer.table.m);
      if (layer.emb) res = layer.emb.at + id * layer.emb.m;
    } else {
      layerNorm(f, x, xn, layer.norm_w.at, layer.norm_b.at, layer.u);
      this.#affine(layer.u, xn, layer.w, layer.b, g);
      res = x;
    }
    const c0 = g + (gru ? 1 : 2) * H;
    for (let j = 0; j < H; j++) {
      const c = f[c0 + j], cand = c >= 0 ? fr(c + 0.5) : sigmoid(c);
      let a, b;
      if (gru) {
        const z = sigmoid(f[g + j]);
        [a, b] = [fr(1 - z), fr(z * cand)];
      } else {
        const d = fr(logSigmoid(f[g + j]) - logSigmoid(f[g + H + j])); // f / (f + i), with no 0 / 0
        [a, b] = [sigmoid(d), fr(sigmoid(-d) * cand)];
      }
      const h = fr(fr(a * f[layer.h + j]) + b);
      f[layer.h + j] = h;
      f[layer.out + j] = res < 0 ? h : fr(h + f[res + j]);
    }
  }

  #gruLayer(layer, k, id, x, xn) {
    const f = this.f, H = this.H, gi = layer.gates, gh = layer.hidden, G = layer.w_hh.m, fr = Math.fround;
    if (k === 0) f.copyWithin(gi, layer.table.at + id * G, layer.table.at + (id + 1) * G);
    else this.#affine(x, xn, layer.w_ih, layer.b_ih, gi);
    this.#affine(layer.h, H, layer.w_hh, layer.b_hh, gh);
    const h = layer.h; // numpy_cells.gru_cell: the r and z columns are pre-halved
    for (let j = 0; j < H; j++) {
      const r = fr(fr(Math.tanh(fr(f[gi + j] + f[gh + j]))) * 0.5 + 0.5);
      const z = fr(fr(Math.tanh(fr(f[gi + H + j] + f[gh + H + j]))) * 0.5 + 0.5);
      const n = fr(Math.tanh(fr(f[gi + 2 * H + j] + fr(r * f[gh + 2 * H + j]))));
      f[h + j] = fr(n + fr(z * fr(f[h + j] - n)));
    }
  }

  /** out = x @ w + b (x: n floats at x). */
  #affine(x, n, w, b, out) {
    const f = this.f, fr = Math.fround;
    f.fill(0, out, out + w.m);
    this.matvec(x, n, w.at, w.m, out);
    for (let j = 0; j < w.cols; j++) f[out + j] = fr(f[out + j] + f[b.at + j]);
  }

  /** The output layer: logits (V,), or the adaptive softmax's log-probabilities in id order. */
  #output(x) {
    const head = this.plan.head, H = this.H;
    this.#affine(x, H, head.w, head.b, head.out);
    const f = this.f;
    if (!this.plan.tails.length) return f.subarray(head.out, head.out + this.V);
    const short = this.config.cutoffs[0];
    logSoftmax(f, head.out, head.w.cols);
    const parts = new Float32Array(this.V);
    parts.set(f.subarray(head.out, head.out + short));
    let at = short;
    this.plan.tails.forEach((tail, i) => {
      f.fill(0, tail.mid, tail.mid + tail.project.m);
      this.matvec(x, H, tail.project.at, tail.project.m, tail.mid);
      f.fill(0, tail.logits, tail.logits + tail.out.m);
      this.matvec(tail.mid, tail.project.cols, tail.out.at, tail.out.m, tail.logits);
      logSoftmax(f, tail.logits, tail.out.cols);
      const gate = f[head.out + short + i];
      for (let j = 0; j < tail.out.cols; j++) parts[at + j] = Math.fround(f[tail.logits + j] + gate);
      at += tail.out.cols;
    });
    const out = f.subarray(this.plan.logits, this.plan.logits + this.V);
    const rank = this.plan.rank;
    for (let i = 0; i < this.V; i++) out[i] = parts[rank[i]];
    return out;
  }

  /** numpy_step.pick for one row, in the same float64 operations. */
  #pick(logits, u, opts, greedy, banned) {
    const V = this.V, x = this.x;
    for (let i = 0; i < V; i++) x[i] = logits[i];
    if (banned >= 0) x[banned] = -Infinity;
    let best = 0;
    for (let i = 1; i < V; i++) if (x[i] > x[best]) best = i;
    if (greedy) return best;
    const top = x[best], T = opts.temperature;
    for (let i = 0; i < V; i++) x[i] = T !== 1 ? (x[i] - top) / T : x[i] - top;
    if (opts.top_k !== null && opts.top_k < V) {
      const kth = Float64Array.from(x).sort()[V - opts.top_k];
      for (let i = 0; i < V; i++) if (x[i] < kth) x[i] = -Infinity;
    }
    for (let i = 0; i < V; i++) x[i] = Math.exp(x[i]);
    if (opts.top_p !== null && opts.top_p < 1) this.#nucleus(opts.top_p);
    if (opts.min_p) {
      let most = 0;
      for (let i = 0; i < V; i++) if (x[i] > most) most = x[i];
      const floor = opts.min_p * most;
      for (let i = 0; i < V; i++) if (x[i] < floor) x[i] = 0;
    }
    for (let i = 1; i < V; i++) x[i] += x[i - 1]; // the cdf
    const total = x[V - 1], target = Math.min(u * total, nextDown(total)); // strictly below the total
    let id = 0;
    while (id < V && x[id] <= target) id++;
    return id;
  }

  /** Top-p on the probabilities in this.x: numpy_step.pick's normalize, stable sort, cumulative sum, cut. */
  #nucleus(p) {
    const V = this.V, x = this.x, order = this.order;
    const total = pairwiseSum(x, 0, V);
    for (let i = 0; i < V; i++) { x[i] /= total; order[i] = i; }
    order.sort((a, b) => x[b] - x[a] || a - b); // descending; among ties the lower id first
    let sum = 0;
    for (let r = 0; r < V; r++) {
      const i = order[r], q = x[i];
      sum += q;
      if (sum - q >= p) x[i] = 0;
    }
  }
}

// -- helpers ------------------------------------------------------------------------------------------------

/** The options with their defaults, or a ChargenError naming the first bad one. */
export function checkOptions(options) {
  if (options === null || typeof options !== "object" || Array.isArray(options)) {
    throw new ChargenError("options must be an object, such as { length: 300, seed: 1 }");
  }
  const unknown = Object.keys(options).filter((k) => !OPTIONS.includes(k));
  if (unknown.length) {
    throw new ChargenError(`unknown option(s) ${unknown.join(", ")}; the options are ${OPTIONS.join(", ")}`);
  }
  const o = { ...DEFAULTS };
  for (const [k, v] of Object.entries(options)) if (v !== undefined) o[k] = v;
  const number = (name, ok, what) => {
    const v = o[name];
    if (v === null && name !== "length" && name !== "temperature") return;
    if (typeof v !== "number" || !Number.isFinite(v) || !ok(v)) {
      throw new ChargenError(`${name} must be ${what}, got ${typeof v === "string" ? JSON.stringify(v) : String(v)}`);
    }
  };
  number("length", (v) => Number.isInteger(v) && v >= 0, "a whole number of characters, 0 or more");
  number("temperature", (v) => v >= 0, "a number at least 0 (0 is greedy)");
  number("top_k", (v) => Number.isInteger(v) && v >= 1, "a whole number at least 1");
  number("top_p", (v) => v > 0 && v <= 1, "a number above 0 and at most 1");
  number("min_p", (v) => v >= 0 && v <= 1, "a number from 0 to 1");
  if (typeof o.stop === "string") o.stop = [o.stop];
  if (!Array.isArray(o.stop) || o.stop.some((s) => typeof s !== "string" || !s)) {
    throw new ChargenError("stop must be a list of non-empty strings");
  }
  if (o.unknown !== "error" && o.unknown !== "unk") {
    throw new ChargenError(`unknown must be "error" or "unk", got ${JSON.stringify(o.unknown)}`);
  }
  if (o.signal != null && (typeof o.signal !== "object" || typeof o.signal.aborted !== "boolean")) {
    throw new ChargenError("signal must be an AbortSignal (new AbortController().signal)");
  }
  o.seed = checkSeed(options.seed);
  return o;
}

function checkSeed(seed) {
  if (seed === undefined || seed === null) { // a fresh 63-bit seed
    const words = crypto.getRandomValues(new Uint32Array(2));
    return (BigInt(words[0] & 0x7fffffff) << 32n) | BigInt(words[1]);
  }
  let value = null;
  if (typeof seed === "bigint") value = seed;
  else if (typeof seed === "number" && Number.isSafeInteger(seed)) value = BigInt(seed);
  else if (typeof seed === "string" && /^[0-9]{1,19}$/.test(seed)) value = BigInt(seed);
  if (value === null || value < 0n || value > MAX_SEED) {
    throw new ChargenError(`seed must be a whole number from 0 to ${MAX_SEED}, got ${JSON.stringify(String(seed))}`);
  }
  return value;
}

const GOLDEN = 0x9e3779b97f4a7c15n, M1 = 0xbf58476d1ce4e5b9n, M2 = 0x94d049bb133111ebn, MASK = (1n << 64n) - 1n;

/** draws.uniforms_at: the uniform float in [0, 1) of (seed, step), splitmix64 in 64-bit BigInt arithmetic. */
export function uniform(seed, step) {
  let x = (seed * GOLDEN + BigInt(step + 1) * M2) & MASK;
  x ^= x >> 30n;
  x = (x * M1) & MASK;
  x ^= x >> 27n;
  x = (x * M2) & MASK;
  x ^= x >> 31n;
  return Number(x >> 11n) / 9007199254740992; // 2 ** 53
}

const bits = new Float64Array(1), word = new BigUint64Array(bits.buffer);

function nextDown(v) { // the float64 just below v > 0 (np.nextafter(v, 0))
  bits[0] = v;
  word[0] -= 1n;
  return bits[0];
}

/** NumPy's sum of a row: eight running sums over blocks of up to 128, halves above that; each addition
 * rounded by `round` (Math.fround for float32's sum). */
export function pairwiseSum(a, lo, n, round = (v) => v) {
  if (n < 8) {
    let s = 0;
    for (let i = lo; i < lo + n; i++) s = round(s + a[i]);
    return s;
  }
  if (n <= 128) {
    const r = Array.from(a.subarray(lo, lo + 8));
    let i = 8;
    for (; i < n - (n % 8); i += 8) for (let j = 0; j < 8; j++) r[j] = round(r[j] + a[lo + i + j]);
    const add = (p, q) => round(p + q);
    let s = add(add(add(r[0], r[1]), add(r[2], r[3])), add(add(r[4], r[5]), add(r[6], r[7])));
    for (; i < n; i++) s = round(s + a[lo + i]);
    return s;
  }
  let half = Math.floor(n / 2);
  half -= half % 8;
  return round(pairwiseSum(a, lo, half, round) + pairwiseSum(a, lo + half, n - half, round));
}

function sigmoid(x) { // numpy_cells.sigmoid in float32: 1 / (1 + exp(-x))
  const fr = Math.fround;
  return fr(1 / fr(1 + fr(Math.exp(-x))));
}

function logSigmoid(x) { // numpy_cells.log_sigmoid in float32: -np.logaddexp(0, -x), as NumPy computes it
  const fr = Math.fround;
  if (x === 0) return fr(-Math.LN2);
  return x > 0 ? -fr(Math.log1p(fr(Math.exp(-x)))) : -fr(-x + fr(Math.log1p(fr(Math.exp(x)))));
}

/** numpy_cells.layer_norm of the n floats at x into out: float32, NumPy's pairwise sums for both means. */
function layerNorm(f, x, n, w, b, out) {
  const fr = Math.fround, centred = new Float32Array(n);
  const mean = fr(pairwiseSum(f, x, n, fr) / n);
  for (let i = 0; i < n; i++) centred[i] = fr(f[x + i] - mean);
  const squares = centred.map((v) => fr(v * v));
  const root = fr(Math.sqrt(fr(fr(pairwiseSum(squares, 0, n, fr) / n) + fr(1e-5))));
  for (let i = 0; i < n; i++) f[out + i] = fr(fr(fr(centred[i] / root) * f[w + i]) + f[b + i]);
}

function logSoftmax(f, at, n) { // in place, as numpy_cells.log_softmax in float32
  const fr = Math.fround, shifted = new Float32Array(n), e = new Float64Array(n);
  let top = -Infinity;
  for (let i = 0; i < n; i++) top = Math.max(top, f[at + i]);
  for (let i = 0; i < n; i++) { shifted[i] = fr(f[at + i] - top); e[i] = fr(Math.exp(shifted[i])); }
  const log = fr(Math.log(pairwiseSum(e, 0, n, fr)));
  for (let i = 0; i < n; i++) f[at + i] = fr(shifted[i] - log);
}

function cutAtStop(text, stops) {
  let cut = text.length;
  for (const s of stops) {
    const i = text.indexOf(s);
    if (i >= 0) cut = Math.min(cut, i);
  }
  return text.slice(0, cut);
}

function partialStopSuffix(text, stops) { // the longest end of text that begins some stop string
  let best = 0;
  for (const s of stops) {
    for (let k = Math.min(s.length - 1, text.length); k > best; k--) {
      if (text.endsWith(s.slice(0, k))) { best = k; break; }
    }
  }
  return best;
}

const K256 = Uint32Array.from([
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01,
  0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc,
  0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147,
  0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116, 0x1e376c08,
  0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208,
  0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
]);

/** SHA-256 of `bytes` (FIPS 180-4), for pages where crypto.subtle is missing (plain HTTP from another machine). */
export function sha256(bytes) {
  const n = bytes.length, blocks = Math.ceil((n + 9) / 64), data = new Uint8Array(blocks * 64);
  data.set(bytes);
  data[n] = 0x80;
  const view = new DataView(data.buffer);
  view.setUint32(data.length - 8, Math.floor(n / 0x20000000)); // the length in bits, big-endian
  view.setUint32(data.length - 4, (n * 8) >>> 0);
  const h = Uint32Array.from([0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]);
  const w = new Uint32Array(64), rot = (x, r) => (x >>> r) | (x << (32 - r));
  for (let b = 0; b < blocks; b++) {
    for (let t = 0; t < 16; t++) w[t] = view.getUint32(b * 64 + t * 4);
    for (let t = 16; t < 64; t++) {
      const s0 = rot(w[t - 15], 7) ^ rot(w[t - 15], 18) ^ (w[t - 15] >>> 3);
      const s1 = rot(w[t - 2], 17) ^ rot(w[t - 2], 19) ^ (w[t - 2] >>> 10);
      w[t] = w[t - 16] + s0 + w[t - 7] + s1;
    }
    let [a, bb, c, d, e, f, g, hh] = h;
    for (let t = 0; t < 64; t++) {
      const t1 = (hh + (rot(e, 6) ^ rot(e, 11) ^ rot(e, 25)) + ((e & f) ^ (~e & g)) + K256[t] + w[t]) >>> 0;
      const t2 = ((rot(a, 2) ^ rot(a, 13) ^ rot(a, 22)) + ((a & bb) ^ (a & c) ^ (bb & c))) >>> 0;
      [hh, g, f, e, d, c, bb, a] = [g, f, e, (d + t1) >>> 0, c, bb, a, (t1 + t2) >>> 0];
    }
    [a, bb, c, d, e, f, g, hh].forEach((v, i) => { h[i] += v; });
  }
  const out = new Uint8Array(32);
  h.forEach((v, i) => new DataView(out.buffer).setUint32(i * 4, v));
  return out;
}

const now = () => (globalThis.performance ?? Date).now();

function nextTask() { // a macrotask (setTimeout's is clamped to 4 ms once nested)
  return new Promise((resolve) => {
    if (typeof MessageChannel !== "function") return setTimeout(resolve, 0);
    const channel = new MessageChannel();
    channel.port1.onmessage = () => { channel.port1.close(); resolve(); };
    channel.port2.postMessage(null);
  });
}
