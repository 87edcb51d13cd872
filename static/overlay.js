// camtrack overlay: a processing function's results (docs/processing.md, "What the page draws")
// drawn on a canvas over the video, each on the picture it describes. Results come on the WebRTC
// data channel (each naming its picture's RTP timestamp, "rtp") or on the websocket beside the
// packets ("pts", the picture's 90 kHz presentation time); app.js hands them to receive(). On each
// picture shown, the result of that picture is drawn, or else the newest older one: never the data
// of a later picture on an earlier one. A status message about once a second says how processing
// goes ("processing stalled" is shown on the page).
"use strict";

(function () {
  const camtrack = window.camtrack;
  const video = document.getElementById("video");
  const drawing = document.getElementById("drawing");
  const stateEl = document.getElementById("processing-state");
  const context = drawing.getContext("2d");
  const WINDOW = 90; // results kept: about 3 s at 30 fps
  const DRAWN_LOG = 600; // drawn pictures kept in the log tests read
  const STALE_TICKS = 90000; // a result more than 1 s (90 kHz) older than the picture is not drawn
  const STATUS_STALE_MS = 3500; // no status for that long: processing is not reported any more
  const WRAP = 2 ** 32;

  const overlay = (camtrack.overlay = {
    results: [], // the newest results, oldest first
    status: null, // the newest status message ({type: "processing", ...})
    statusAt: 0,
    latest: null, // the newest result received
    shown: null, // the picture shown now: {field, key}
    drawnResult: null, // the result drawn on the picture shown now
    drawnAge: null, // ms from its frame's capture to the moment it was drawn
    // (shown picture's key, the drawn result's frame, time and key, when, ...) newest last
    drawn: [],
    received: 0,
    onDraw: null, // optional hook (entry, metadata) called after each picture's drawing
    receive,
    reset,
    picture,
  });

  function receive(message) {
    if (!message || typeof message !== "object") return;
    if (message.type === "processing") {
      overlay.status = message;
      overlay.statusAt = performance.now();
      showState();
    } else if (message.type === "data") {
      overlay.received += 1;
      overlay.latest = message;
      overlay.results.push(message);
      if (overlay.results.length > WINDOW) overlay.results.splice(0, overlay.results.length - WINDOW);
      // the data of the picture shown now, come after it was drawn (the websocket's pictures are
      // drawn as soon as decoded): drawn on it now
      const shown = overlay.shown;
      if (shown && message[shown.field] === shown.key && overlay.drawnResult !== message) {
        picture(shown.field, shown.key, null);
      }
    }
  }

  function reset() {
    overlay.results = [];
    overlay.latest = overlay.status = overlay.drawnResult = overlay.shown = null;
    overlay.drawnAge = null;
    clear();
    showState();
  }

  function showState() {
    const status = overlay.status;
    const state = status && performance.now() - overlay.statusAt < STATUS_STALE_MS ? status.state : null;
    const bad = state === "stalled" || state === "failing";
    stateEl.hidden = !bad;
    if (bad) {
      stateEl.textContent = `processing ${state}` + (status.error ? `: ${String(status.error).slice(0, 120)}` : "");
    }
  }
  setInterval(showState, 1000);

  // how far `key` is after `base`, in its clock's ticks: RTP timestamps wrap at 2**32
  function after(key, base, field) {
    if (field !== "rtp") return key - base;
    let delta = (key - base + WRAP) % WRAP;
    if (delta >= WRAP / 2) delta -= WRAP;
    return delta;
  }

  // The result to draw on the picture whose `field` ("rtp" or "pts") is `key`: its own, else the
  // closest one of an earlier picture (whatever order they arrived in: the data channel is
  // unordered), if not stale; null: none.
  function resultFor(field, key) {
    let best = null;
    let bestBehind = Infinity;
    for (const r of overlay.results) {
      if (typeof r[field] !== "number") continue;
      const behind = after(key, r[field], field);
      if (behind < 0 || behind >= bestBehind) continue; // a later picture's data, or farther
      best = r;
      bestBehind = behind;
      if (behind === 0) break; // its own
    }
    return best && bestBehind <= STALE_TICKS ? best : null;
  }

  // A picture is shown now (its `field` is `key`): draw its result.
  function picture(field, key, metadata) {
    overlay.shown = { field, key };
    const result = resultFor(field, key);
    const view = camtrack.view();
    draw(result ? result.data : null, view);
    overlay.drawnResult = result;
    overlay.drawnAge = result ? Date.now() - result.time * 1000 : null;
    if (!result) return;
    const entry = { field, shown: key, frame: result.frame, time: result.time, key: result[field],
                    at: performance.now(), age: overlay.drawnAge };
    overlay.drawn.push(entry);
    if (overlay.drawn.length > DRAWN_LOG) overlay.drawn.splice(0, overlay.drawn.length - DRAWN_LOG);
    if (overlay.onDraw) overlay.onDraw(entry, metadata);
  }

  function clear() {
    context.clearRect(0, 0, drawing.width, drawing.height);
  }

  // Where the picture is on the page: the element's box with object-fit: contain.
  function placement(view) {
    const rect = view.element.getBoundingClientRect();
    const scale = Math.min(rect.width / view.width, rect.height / view.height);
    return { scale, x: (rect.width - view.width * scale) / 2, y: (rect.height - view.height * scale) / 2 };
  }

  function draw(data, view) {
    const ratio = window.devicePixelRatio || 1;
    const width = Math.round(drawing.clientWidth * ratio);
    const height = Math.round(drawing.clientHeight * ratio);
    if (drawing.width !== width || drawing.height !== height) {
      drawing.width = width;
      drawing.height = height;
    }
    clear();
    if (!data || typeof data !== "object" || !view.width || !view.height) return;
    const place = placement(view);
    context.setTransform(ratio, 0, 0, ratio, 0, 0);
    const box = (x, y, w, h) => [place.x + x * place.scale, place.y + y * place.scale, w * place.scale, h * place.scale];
    context.lineWidth = 2;
    context.font = "13px system-ui, sans-serif";
    context.textBaseline = "bottom";
    for (const b of Array.isArray(data.boxes) ? data.boxes.slice(0, 500) : []) {
      const [x, y, w, h] = Array.isArray(b) ? b : [b.x, b.y, b.w, b.h];
      if (![x, y, w, h].every(Number.isFinite)) continue;
      const color = (!Array.isArray(b) && typeof b.color === "string" && b.color) || "#3f3";
      const [sx, sy, sw, sh] = box(x, y, w, h);
      context.strokeStyle = color;
      context.strokeRect(sx, sy, sw, sh);
      if (!Array.isArray(b) && b.label !== undefined && b.label !== null) {
        const label = String(b.label).slice(0, 60);
        const tw = context.measureText(label).width + 6;
        context.fillStyle = color;
        context.fillRect(sx - 1, sy - 17, tw, 17);
        context.fillStyle = "#000";
        context.fillText(label, sx + 2, sy - 2);
      }
    }
    const motion = data.motion;
    if (motion && typeof motion === "object") {
      context.strokeStyle = "#fa3";
      for (const region of Array.isArray(motion.regions) ? motion.regions.slice(0, 500) : []) {
        if (Array.isArray(region) && region.slice(0, 4).every(Number.isFinite)) context.strokeRect(...box(...region));
      }
      if (Number.isFinite(motion.level)) {
        const [sx, sy] = box(0, view.height, 0, 0);
        const level = Math.max(0, Math.min(1, motion.level));
        context.fillStyle = "rgba(0, 0, 0, 0.5)";
        context.fillRect(sx + 8, sy - 20, 104, 12);
        context.fillStyle = "#fa3";
        context.fillRect(sx + 10, sy - 18, 100 * level, 8);
      }
    }
    const text = typeof data.text === "string" ? [data.text] : Array.isArray(data.text) ? data.text : [];
    if (text.length) {
      const [sx, sy] = box(0, 0, 0, 0);
      context.font = "16px system-ui, sans-serif";
      text.slice(0, 20).forEach((line, i) => {
        const s = String(line).slice(0, 200);
        context.fillStyle = "rgba(0, 0, 0, 0.6)";
        context.fillRect(sx + 6, sy + 24 + i * 20, context.measureText(s).width + 8, 20);
        context.fillStyle = "#fff";
        context.fillText(s, sx + 10, sy + 42 + i * 20);
      });
    }
    context.setTransform(1, 0, 0, 1, 0, 0);
  }

  // The rest of the data (not boxes, motion, text), compact, for the statistics panel.
  overlay.other = function () {
    const data = overlay.latest && overlay.latest.data;
    if (data === null || data === undefined) return null;
    if (typeof data !== "object" || Array.isArray(data)) return JSON.stringify(data).slice(0, 200);
    const rest = Object.fromEntries(Object.entries(data).filter(([k]) => !["boxes", "motion", "text"].includes(k)));
    return Object.keys(rest).length ? JSON.stringify(rest).slice(0, 200) : null;
  };

  // WebRTC and MSE: which picture the video shows, per presented frame
  if (video.requestVideoFrameCallback) {
    video.requestVideoFrameCallback(function shown(now, metadata) {
      video.requestVideoFrameCallback(shown);
      if (camtrack.decoder === "webrtc" && typeof metadata.rtpTimestamp === "number") {
        picture("rtp", metadata.rtpTimestamp >>> 0, metadata);
      } else if (camtrack.decoder === "mse" && camtrack.player && camtrack.player.ptsAt) {
        const pts = camtrack.player.ptsAt(metadata.mediaTime);
        if (pts !== null) picture("pts", pts, metadata);
      }
    });
  }
})();
