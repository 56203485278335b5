// vaekit's latent-space explorer: a map to drag over, sliders, prior samples, interpolation and nearest
// neighbours for small VAEs; channel heat maps and channel edits for image autoencoders. Decodes through
// `vaekit serve`'s API, or (report.html) in the page with the decoder's weights embedded.
(function () {
  "use strict";
  const root = document.getElementById("vaekit-explorer");
  const config = JSON.parse(document.getElementById("vaekit-explorer-config").textContent);
  const state = { ready: false, pending: 0, decodes: 0, z: null, image: null, label: null, error: null };
  window.vaekitExplorer = state; // what the page shows, for scripts and tests

  // ------------------------------------------------------------------------------------------ helpers
  function floats(text) {
    const binary = atob(text);
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
    return new Float32Array(bytes.buffer);
  }
  function base64(values) {
    const array = Float32Array.from(values);
    const bytes = new Uint8Array(array.buffer);
    let text = "";
    for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    return btoa(text);
  }
  function el(tag, attributes, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attributes || {})) {
      if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
      else if (key === "className") node.className = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) node.append(child);
    return node;
  }
  const status = el("div", { className: "vx-status" });
  function say(message, isError) {
    status.textContent = message;
    status.classList.toggle("vx-error", !!isError);
    if (isError) state.error = message;
  }
  async function api(path, body) {
    const response = await fetch(path, body === undefined ? {} : {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    const data = await response.json();
    if (!response.ok) throw new Error(data.error || response.statusText);
    return data;
  }
  const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
                   "#bcbd22", "#17becf"];

  // Draw a (C, H, W) image with values in [0, 1] (C = 1 or 3) onto a canvas, scaled up by `scale`.
  function drawImage(canvas, image, shape, scale) {
    const [c, h, w] = shape;
    canvas.width = w; canvas.height = h;
    canvas.style.width = (w * scale) + "px"; canvas.style.height = (h * scale) + "px";
    const context = canvas.getContext("2d");
    const pixels = context.createImageData(w, h);
    for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
      const p = (y * w + x) * 4;
      for (let k = 0; k < 3; k++) {
        const v = image[(c === 1 ? 0 : k) * h * w + y * w + x];
        pixels.data[p + k] = Math.round(Math.min(1, Math.max(0, v)) * 255);
      }
      pixels.data[p + 3] = 255;
    }
    context.putImageData(pixels, 0, 0);
  }
  // A (H, W) map of signed values as blue (negative) – white – red (positive).
  function drawHeat(canvas, values, h, w, scale, extent) {
    canvas.width = w; canvas.height = h;
    canvas.style.width = (w * scale) + "px"; canvas.style.height = (h * scale) + "px";
    const context = canvas.getContext("2d");
    const pixels = context.createImageData(w, h);
    for (let i = 0; i < h * w; i++) {
      const t = Math.max(-1, Math.min(1, values[i] / (extent || 1)));
      const r = t > 0 ? 255 : Math.round(255 * (1 + t)), b = t < 0 ? 255 : Math.round(255 * (1 - t));
      const g = Math.round(255 * (1 - Math.abs(t)));
      pixels.data.set([r, g, b, 255], i * 4);
    }
    context.putImageData(pixels, 0, 0);
  }

  // Decode requests: at most one in flight; while it runs only the newest request waits (dragging
  // asks far faster than a server answers).
  function makeQueue(run) {
    let running = false, waiting = null;
    async function pump() {
      if (running || waiting === null) return;
      const job = waiting; waiting = null; running = true;
      try { await run(job); } catch (err) { say(err.message, true); }
      running = false; state.pending -= 1;
      pump();
    }
    return function (job) {
      if (waiting === null) state.pending += 1;
      waiting = job;
      pump();
    };
  }

  // ------------------------------------------------------------------------------------------ in-page decoder
  // The small VAEs' decoder: linear layers with SiLU between them, then the likelihood's mean.
  function localDecoder(spec, numClasses) {
    const layers = spec.layers.map((l) => ({ n: l.in, m: l.out, w: floats(l.weight), b: floats(l.bias) }));
    return function (z, label) {
      let h = new Float64Array(layers[0].n);
      h.set(z);
      if (numClasses) h[z.length + label] = 1;
      layers.forEach((layer, index) => {
        const out = new Float64Array(layer.m);
        for (let j = 0; j < layer.m; j++) {
          let sum = layer.b[j];
          const row = j * layer.n;
          for (let i = 0; i < layer.n; i++) sum += layer.w[row + i] * h[i];
          out[j] = index < layers.length - 1 ? sum / (1 + Math.exp(-sum)) : sum;
        }
        h = out;
      });
      const image = new Float32Array(h.length);
      for (let i = 0; i < h.length; i++) {
        const l = h[i];
        if (spec.output === "bernoulli") image[i] = 1 / (1 + Math.exp(-l));
        else if (spec.output === "continuous-bernoulli")
          image[i] = Math.abs(l) < 1e-3 ? 0.5 + l / 12 : 1 / (-Math.expm1(-l)) - 1 / l;
        else image[i] = l;
      }
      return image;
    };
  }

  // ------------------------------------------------------------------------------------------ small VAEs
  function vectorExplorer(info) {
    const d = info.latent_dim, shape = info.image_shape;
    const codes = floats(info.codes);
    const code = (i) => Array.from(codes.subarray(i * d, (i + 1) * d));
    const count = info.labels.length;
    const numClasses = info.conditional ? info.classes.length : 0;
    const local = info.decoder ? localDecoder(info.decoder, numClasses) : null;
    state.localDecode = local; // (z, label) -> image, for timing the in-page decoder
    const scale = Math.max(4, Math.round(192 / shape[1]));
    state.label = info.conditional ? 0 : null;
    state.z = code(0);
    let base = 0; // the test example the map's plane goes through
    const origin = info.map.origin, axes = info.map.axes;
    const project = (z) => axes.map((a) => a.reduce((s, v, i) => s + v * (z[i] - origin[i]), 0));
    const points = info.map.points;
    const xs = points.map((p) => p[0]), ys = points.map((p) => p[1]);
    const pad = 0.08 * Math.max(Math.max(...xs) - Math.min(...xs), Math.max(...ys) - Math.min(...ys), 1e-6);
    const bounds = [Math.min(...xs) - pad, Math.max(...xs) + pad, Math.min(...ys) - pad, Math.max(...ys) + pad];
    const SIZE = 360;
    const toPixel = (p) => [(p[0] - bounds[0]) / (bounds[1] - bounds[0]) * SIZE,
                            (1 - (p[1] - bounds[2]) / (bounds[3] - bounds[2])) * SIZE];
    const fromPixel = (x, y) => [bounds[0] + x / SIZE * (bounds[1] - bounds[0]),
                                 bounds[2] + (1 - y / SIZE) * (bounds[3] - bounds[2])];
    function latentAt(p) {
      if (info.map.method === "latent") return [p[0], p[1]];
      const through = code(base), q = project(through);
      return through.map((v, i) => v + (p[0] - q[0]) * axes[0][i] + (p[1] - q[1]) * axes[1][i]);
    }

    const map = el("canvas", { className: "vx-map", width: SIZE, height: SIZE });
    const output = el("canvas", {});
    function drawMap() {
      const context = map.getContext("2d");
      context.clearRect(0, 0, SIZE, SIZE);
      points.forEach((p, i) => {
        const [x, y] = toPixel(p);
        context.fillStyle = info.labels[i] >= 0 ? PALETTE[info.labels[i] % PALETTE.length] : "#777";
        context.globalAlpha = 0.6;
        context.fillRect(x - 2, y - 2, 4, 4);
      });
      context.globalAlpha = 1;
      const [bx, by] = toPixel(points[base]);
      context.strokeStyle = "#000"; context.lineWidth = 1.5;
      context.strokeRect(bx - 5, by - 5, 10, 10);
      const [x, y] = toPixel(project(state.z));
      context.beginPath(); context.arc(x, y, 6, 0, 2 * Math.PI);
      context.strokeStyle = "#d62728"; context.lineWidth = 2.5; context.stroke();
    }

    const neighbours = el("div", { className: "vx-thumbs" });
    function showNeighbours(z) {
      const distances = [];
      for (let i = 0; i < count; i++) {
        let s = 0;
        for (let k = 0; k < d; k++) { const t = codes[i * d + k] - z[k]; s += t * t; }
        distances.push([Math.sqrt(s), i]);
      }
      distances.sort((a, b) => a[0] - b[0]);
      state.neighbours = distances.slice(0, 6).map((p) => p[1]);
      neighbours.replaceChildren(...distances.slice(0, 6).map(([distance, i]) => el("figure", {},
        el("img", { src: info.thumbnails[i], title: "test example " + i, onclick: () => choose(i) }),
        el("figcaption", {}, distance.toFixed(2)))));
    }

    const sliders = {};
    const sliderBox = el("div", { className: "vx-sliders" });
    info.order.forEach((dim) => {
      const value = el("span", {}, "0");
      const input = el("input", { type: "range", min: -4, max: 4, step: 0.01, value: 0, "data-dim": dim,
        oninput: (event) => { state.z[dim] = parseFloat(event.target.value); update(); } });
      sliders[dim] = { input, value };
      const inactive = !info.active[dim];
      sliderBox.append(el("span", { className: inactive ? "vx-inactive" : "" },
        `z${dim} · KL ${info.kl_per_dim[dim].toFixed(2)}${inactive ? " (inactive)" : ""}`), input, value);
    });

    const decodeQueue = makeQueue(async (job) => {
      const image = local ? local(job.z, job.label) : floats((await api("/api/decode",
        { z: base64(job.z), label: job.label })).image);
      state.image = image; state.imageZ = job.z.slice(); state.imageLabel = job.label; state.decodes += 1;
      drawImage(output, image, shape, scale);
    });
    function update() {
      const z = state.z;
      info.order.forEach((dim) => {
        sliders[dim].input.value = z[dim];
        sliders[dim].value.textContent = z[dim].toFixed(2);
      });
      drawMap();
      showNeighbours(z);
      decodeQueue({ z: z.slice(), label: state.label });
    }
    function choose(i) {
      base = i; state.base = i; state.z = code(i);
      if (info.conditional && info.labels[i] >= 0) { state.label = info.labels[i]; classSelect.value = state.label; }
      update();
    }

    let dragging = false;
    function probe(event) {
      const box = map.getBoundingClientRect();
      const p = fromPixel((event.clientX - box.left) * SIZE / box.width, (event.clientY - box.top) * SIZE / box.height);
      state.z = latentAt(p);
      update();
    }
    map.addEventListener("pointerdown", (event) => {
      const box = map.getBoundingClientRect();
      const x = (event.clientX - box.left) * SIZE / box.width, y = (event.clientY - box.top) * SIZE / box.height;
      const hit = points.findIndex((p) => { const [px, py] = toPixel(p); return Math.hypot(px - x, py - y) < 3; });
      if (event.shiftKey && hit >= 0) { // shift-click: the map's plane through that example, the path's start
        from.value = hit; choose(hit); return;
      }
      if (event.altKey && hit >= 0) { to.value = hit; scrubber.value = 1; scrub(); return; } // alt-click: the path's end
      dragging = true;
      map.setPointerCapture(event.pointerId);
      probe(event);
    });
    map.addEventListener("pointermove", (event) => { if (dragging) probe(event); });
    map.addEventListener("pointerup", () => { dragging = false; });

    const classSelect = el("select", { onchange: (event) => { state.label = parseInt(event.target.value, 10); update(); } },
      ...info.classes.map((name, i) => el("option", { value: i }, name)));
    const prior = el("button", { type: "button", onclick: () => {
      state.z = Array.from({ length: d }, () => {
        const u = 1 - Math.random(), v = Math.random();
        return Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * v);
      });
      update();
    } }, "sample from the prior");

    // Interpolation between two test examples.
    const pick = (name, initial) => el("select", { "data-role": name, onchange: () => scrub() },
      ...Array.from({ length: count }, (_, i) => {
        const option = el("option", { value: i }, `#${i}${info.labels[i] >= 0 && info.classes.length ? " " + info.classes[info.labels[i]] : ""}`);
        if (i === initial) option.selected = true;
        return option;
      }));
    const from = pick("from", 0), to = pick("to", Math.min(1, count - 1));
    const mode = el("select", { onchange: () => scrub() }, el("option", { value: "linear" }, "linear"),
                    el("option", { value: "spherical" }, "spherical"));
    const scrubber = el("input", { type: "range", min: 0, max: 1, step: 0.01, value: 0, className: "vx-scrub",
                                   oninput: () => scrub() });
    function scrub() {
      const a = code(parseInt(from.value, 10)), b = code(parseInt(to.value, 10)), t = parseFloat(scrubber.value);
      if (mode.value === "linear") state.z = a.map((v, i) => (1 - t) * v + t * b[i]);
      else {
        const na = Math.hypot(...a), nb = Math.hypot(...b);
        const cos = Math.max(-1, Math.min(1, a.reduce((s, v, i) => s + v * b[i], 0) / (na * nb || 1)));
        const omega = Math.acos(cos);
        state.z = Math.sin(omega) < 1e-6 ? a.map((v, i) => (1 - t) * v + t * b[i])
          : a.map((v, i) => (Math.sin((1 - t) * omega) * v + Math.sin(t * omega) * b[i]) / Math.sin(omega));
      }
      update();
    }

    const title = info.map.method === "latent" ? "the map is the 2-D latent space itself" :
      "the map is the PCA plane of the test codes through the boxed example";
    root.append(
      el("div", { className: "vx-row" },
        el("div", { className: "vx-panel" }, el("h3", {}, "Drag over the map"), map,
           el("label", { style: "max-width: 360px" }, "Points: test examples, coloured by label; " + title +
              ". Shift-click a point: start there (and put the map's plane through it); alt-click: interpolate to it.")),
        el("div", { className: "vx-panel" }, el("h3", {}, "Decoded"), output,
           info.conditional ? el("label", {}, "class ", classSelect) : "", prior,
           el("h3", {}, "Nearest test examples"), neighbours)),
      el("div", { className: "vx-row" },
        el("div", { className: "vx-panel" }, el("h3", {}, `Latent dimensions (by KL; ${d})`), sliderBox),
        el("div", { className: "vx-panel" }, el("h3", {}, "Interpolate between two test examples"),
           el("label", {}, "from ", from, " to ", to, " ", mode), scrubber)),
      status);
    state.shape = shape;
    choose(0);
  }

  // ------------------------------------------------------------------------------------------ image autoencoders
  function imageExplorer(info) {
    const [c] = info.latent_shape;
    let current = null, second = null; // {latent, shape, image, imageShape}
    const original = el("canvas", {}), output = el("canvas", {});
    const channels = el("div", { className: "vx-channels" });
    const edits = Array.from({ length: c }, () => ({ scale: 1, zero: false, noise: 0 }));
    state.edits = edits;
    let seed = 1;
    const random = () => { seed = (seed * 16807) % 2147483647; return (seed - 1) / 2147483646; };
    const gauss = () => Math.sqrt(-2 * Math.log(1 - random())) * Math.cos(2 * Math.PI * random());
    const scaleOf = (h) => Math.max(1, Math.round(256 / h));

    const decodeQueue = makeQueue(async (job) => {
      const result = await api("/api/decode", { z: base64(job.z), shape: job.shape });
      state.image = floats(result.image); state.imageZ = job.z; state.decodes += 1;
      drawImage(output, state.image, result.shape, scaleOf(result.shape[1]));
    });
    function edited(t) {
      const [ch, h, w] = current.shape, z = new Float32Array(current.latent.length);
      seed = 1;
      for (let k = 0; k < ch; k++) for (let i = 0; i < h * w; i++) {
        const index = k * h * w + i;
        let v = current.latent[index];
        if (second && t > 0) v = (1 - t) * v + t * second.latent[index];
        v = edits[k].zero ? 0 : v * edits[k].scale;
        if (edits[k].noise > 0) v += edits[k].noise * gauss();
        z[index] = v;
      }
      return z;
    }
    function update() {
      if (!current) return;
      const t = second ? parseFloat(scrubber.value) : 0;
      const z = edited(t);
      state.z = Array.from(z);
      const [ch, h, w] = current.shape;
      let extent = 0;
      for (const v of z) extent = Math.max(extent, Math.abs(v));
      channels.replaceChildren(...Array.from({ length: ch }, (_, k) => {
        const heat = el("canvas", {});
        drawHeat(heat, z.subarray(k * h * w, (k + 1) * h * w), h, w, Math.max(2, Math.round(96 / h)), extent);
        const edit = edits[k];
        return el("div", { className: "vx-channel" }, el("span", {}, `channel ${k}`), heat,
          el("label", {}, "scale ", el("input", { type: "range", min: 0, max: 3, step: 0.05, value: edit.scale,
            "data-channel": k, "data-edit": "scale", onchange: (e) => { edit.scale = parseFloat(e.target.value); update(); } })),
          el("label", {}, el("input", Object.assign({ type: "checkbox", "data-channel": k, "data-edit": "zero",
            onchange: (e) => { edit.zero = e.target.checked; update(); } }, edit.zero ? { checked: "" } : {})), " zero"),
          el("label", {}, "noise ", el("input", { type: "range", min: 0, max: 2, step: 0.05, value: edit.noise,
            "data-channel": k, "data-edit": "noise", onchange: (e) => { edit.noise = parseFloat(e.target.value); update(); } })));
      }));
      decodeQueue({ z: Array.from(z), shape: current.shape });
    }
    async function load(body, role) {
      state.pending += 1; // an encode in flight counts as pending work, like a decode
      try { await loadNow(body, role); } finally { state.pending -= 1; }
    }
    async function loadNow(body, role) {
      say("encoding…");
      const result = await api("/api/encode", body);
      const item = { latent: floats(result.latent), shape: result.latent_shape, image: floats(result.image),
                     imageShape: result.shape };
      if (role === "second") {
        if (!current || item.shape.join() !== current.shape.join()) {
          say("the two images must have latents of one shape to interpolate", true); return;
        }
        second = item;
      } else {
        current = item; second = null; scrubber.value = 0;
        drawImage(original, item.image, item.imageShape, scaleOf(item.imageShape[1]));
      }
      say("");
      update();
    }
    const thumbs = el("div", { className: "vx-thumbs" }, ...info.thumbnails.map((src, i) => el("img", {
      src, title: `test image ${i} (shift-click: interpolation target)`, "data-index": i,
      onclick: (event) => {
        if (!event.shiftKey) thumbs.querySelectorAll("img").forEach((img) => img.classList.remove("vx-selected"));
        event.target.classList.add("vx-selected");
        load({ index: i }, event.shiftKey ? "second" : "first").catch((err) => say(err.message, true));
      } })));
    const upload = el("input", { type: "file", accept: "image/*", onchange: (event) => {
      const file = event.target.files[0];
      if (!file) return;
      const reader = new FileReader();
      reader.onload = () => load({ upload: reader.result }, "first").catch((err) => say(err.message, true));
      reader.readAsDataURL(file);
    } });
    const scrubber = el("input", { type: "range", min: 0, max: 1, step: 0.01, value: 0, className: "vx-scrub",
                                   oninput: () => update() });
    root.append(
      el("h3", {}, "Pick a test image (shift-click a second one to interpolate towards it), or upload one"),
      thumbs, el("label", {}, "upload ", upload),
      el("div", { className: "vx-row" },
        el("div", { className: "vx-panel" }, el("h3", {}, "Image"), original),
        el("div", { className: "vx-panel" }, el("h3", {}, "Decoded from the edited latent"), output,
           el("label", {}, "interpolate towards the second image ", scrubber))),
      el("h3", {}, `Latent channels (${info.latent_shape.join(" × ")}): scale, zero or add noise to one`),
      channels, status);
    state.load = load;
    load({ index: 0 }, "first").catch((err) => say(err.message, true));
  }

  // ------------------------------------------------------------------------------------------ start
  async function start() {
    try {
      const info = config.payload || await api("/api/info");
      state.info = info;
      if (info.kind === "vector") vectorExplorer(info);
      else imageExplorer(info);
      state.ready = true;
    } catch (err) {
      root.append(status);
      say("the explorer could not start: " + err.message, true);
    }
  }
  start();
})();
