// camtrack viewer controls: camera picker, stats overlay (with the live latency of the test
// pattern), fullscreen and snapshot. The connection itself is app.js.
"use strict";

(function () {
  const camtrack = window.camtrack;
  const video = document.getElementById("video");
  const main = document.querySelector("main");
  const picker = document.getElementById("camera");
  const overlay = document.getElementById("overlay");
  const statsEl = document.getElementById("stats");
  let cameras = [];

  function authHeaders() {
    const token = camtrack.token();
    return token ? { Authorization: `Bearer ${token}` } : {};
  }

  // --- camera picker: shown when the server has more than one camera
  async function loadCameras() {
    try {
      const response = await fetch("api/cameras", { headers: authHeaders() });
      cameras = (await response.json()).cameras;
    } catch {
      return;
    }
    picker.replaceChildren(...cameras.map((c) => new Option(`${c.name} (${c.width}×${c.height})`, c.name)));
    picker.hidden = cameras.length < 2;
    if (camtrack.camera) picker.value = camtrack.camera;
  }
  picker.addEventListener("change", () => camtrack.switchCamera(picker.value));

  // --- the quality picker (docs/quality.md): shown when the camera has more than one tier
  const qualityPicker = document.getElementById("quality");
  document.addEventListener("camtrack:hello", (event) => {
    const qualities = event.detail.qualities || ["main"];
    qualityPicker.hidden = qualities.length < 2;
    qualityPicker.value = camtrack.qualityChoice;
  });
  qualityPicker.addEventListener("change", () => camtrack.setQuality(qualityPicker.value));
  document.addEventListener("camtrack:token", loadCameras); // a token typed in: the list it may now see
  document.addEventListener("camtrack:hello", (event) => {
    if (event.detail.camera) picker.value = event.detail.camera;
  });

  // --- the latency stamp (see docs/architecture.md): 32 cells along the top rows, MSB first, white = 1
  const stampCanvas = document.createElement("canvas");
  const stampContext = stampCanvas.getContext("2d", { willReadFrequently: true });

  // the stamp of the picture shown now (null: nothing shown)
  function readStamp() {
    const { element, width } = camtrack.view();
    if (!width || width < 32) return null;
    // the cells were drawn at the camera's width: a smaller picture (a quality tier, docs/quality.md)
    // is read at its scale, back at that size
    const source = (camtrack.hello && camtrack.hello.width > width && camtrack.hello.width) || width;
    const cell = Math.max(1, Math.min(16, Math.floor(source / 32)));
    const drawn = (cell * width) / source;
    stampCanvas.width = cell * 32;
    stampCanvas.height = cell;
    stampContext.drawImage(element, 0, 0, drawn * 32, drawn, 0, 0, cell * 32, cell);
    const pixels = stampContext.getImageData(0, 0, cell * 32, cell).data;
    const y = Math.floor(cell / 2);
    let stamp = 0;
    for (let bit = 0; bit < 32; bit++) {
      const x = bit * cell + Math.floor(cell / 2);
      const i = (y * cell * 32 + x) * 4;
      const level = (pixels[i] + pixels[i + 1] + pixels[i + 2]) / 3;
      stamp = stamp * 2 + (level >= 128 ? 1 : 0);
    }
    return stamp;
  }

  function readLatency() {
    const stamp = readStamp();
    if (stamp === null) return null;
    const now = Date.now() % 2 ** 32;
    let latency = (now - stamp + 2 ** 32) % 2 ** 32;
    if (latency >= 2 ** 31) latency -= 2 ** 32;
    return latency >= -1000 && latency < 60000 ? latency : null;
  }

  camtrack.readLatency = readLatency; // for benchmarks: the latency of what is shown now
  camtrack.readStamp = readStamp; // and its stamp (tests: which picture is shown)

  // --- the stats overlay, from getStats() once a second
  let previous = null;
  let previousPc = null;
  const TRANSPORTS = { webrtc: "WebRTC", webcodecs: "websocket (WebCodecs)", mse: "websocket (MSE)", mjpeg: "MJPEG" };

  // rows of a websocket player's own counters: the same rates getStats() gives for WebRTC
  function playerRows(player, rows) {
    const now = performance.now();
    const { frames, bytes } = player.stats;
    if (player.stats.codec) rows.push(["codec", player.stats.codec]);
    if (previous && previous.player === player && now > previous.at) {
      const seconds = (now - previous.at) / 1000;
      rows.push(["fps", ((frames - previous.frames) / seconds).toFixed(0)]);
      rows.push(["bitrate", `${(((bytes - previous.bytes) * 8) / seconds / 1e6).toFixed(2)} Mbit/s`]);
    } else {
      rows.push(["fps", "-"], ["bitrate", "-"]);
    }
    rows.push(["resyncs", String(player.stats.resyncs)]);
    previous = { player, at: now, frames, bytes };
  }

  async function updateStats() {
    const pc = camtrack.pc;
    const player = camtrack.player;
    if (overlay.hidden || !(pc || player || camtrack.decoder === "mjpeg")) return;
    if (pc !== previousPc) previous = null; // rates are per connection
    previousPc = pc;
    const report = pc ? await pc.getStats() : new Map();
    let inbound = null;
    let pair = null;
    report.forEach((r) => {
      if (r.type === "inbound-rtp" && r.kind === "video") inbound = r;
      if (r.type === "candidate-pair" && r.nominated && r.state === "succeeded") pair = r;
    });
    const view = camtrack.view();
    const rows = [["state", camtrack.state], ["camera", camtrack.camera || "-"]];
    rows.push(["transport", TRANSPORTS[camtrack.decoder] || "-"]);
    rows.push(["resolution", view.width ? `${view.width}×${view.height}` : "-"]);
    const quality = camtrack.quality;
    if (quality) {
      const moving = quality.moving_to ? `, moving to ${quality.moving_to}` : "";
      rows.push(["tier", `${quality.tier} (${quality.reason}${moving}; asked: ${quality.choice})`]);
    }
    if (player) playerRows(player, rows);
    if (inbound) {
      const codec = inbound.codecId && report.get(inbound.codecId);
      if (codec) rows.push(["codec", codec.mimeType.replace("video/", "")]);
      let fps = inbound.framesPerSecond;
      let bitrate = null;
      if (previous && inbound.timestamp > previous.timestamp) {
        const seconds = (inbound.timestamp - previous.timestamp) / 1000;
        bitrate = ((inbound.bytesReceived - previous.bytesReceived) * 8) / seconds;
        if (fps === undefined) fps = (inbound.framesDecoded - previous.framesDecoded) / seconds;
      }
      previous = inbound;
      rows.push(["fps", fps !== undefined ? fps.toFixed(0) : "-"]);
      rows.push(["bitrate", bitrate !== null ? `${(bitrate / 1e6).toFixed(2)} Mbit/s` : "-"]);
      rows.push(["jitter", inbound.jitter !== undefined ? `${(inbound.jitter * 1000).toFixed(1)} ms` : "-"]);
      rows.push(["packets lost", String(inbound.packetsLost ?? 0)]);
    }
    const sound = camtrack.audio; // (audio.js)
    if (sound && sound.codec) rows.push(["audio", `${sound.codec}${sound.muted ? " (muted)" : ""}`]);
    if (pair && pair.currentRoundTripTime !== undefined) {
      rows.push(["RTT", `${(pair.currentRoundTripTime * 1000).toFixed(1)} ms`]);
    }
    const camera = cameras.find((c) => c.name === camtrack.camera);
    if (camera && camera.source === "pattern") {
      const latency = readLatency();
      camtrack.latency = latency;
      rows.push(["glass-to-glass", latency !== null ? `${latency} ms` : "-"]);
    }
    processingRows(rows);
    statsEl.replaceChildren(...rows.flatMap(([k, v]) => {
      const dt = document.createElement("dt");
      const dd = document.createElement("dd");
      dt.textContent = k;
      dd.textContent = v;
      return [dt, dd];
    }));
    camtrack.stats = Object.fromEntries(rows);
  }
  setInterval(() => updateStats().catch(() => {}), 1000);

  // the camera's processing function, from its status messages (overlay.js)
  function processingRows(rows) {
    const overlay = camtrack.overlay;
    const status = overlay && overlay.status;
    if (!status) return;
    const current = performance.now() - overlay.statusAt < 3500;
    rows.push(["processing", String(status.function || "-")]);
    rows.push(["processing state", current ? status.state : "unknown (no report)"]);
    rows.push(["calls/s", status.rate !== null && status.rate !== undefined ? status.rate.toFixed(1) : "-"]);
    rows.push(["ms per frame", status.ms !== null && status.ms !== undefined ? status.ms.toFixed(1) : "-"]);
    rows.push(["data age (drawn)", overlay.drawnAge !== null ? `${Math.round(overlay.drawnAge)} ms` : "-"]);
    const other = overlay.other();
    if (other) rows.push(["data", other]);
  }

  function toggleOverlay(show = overlay.hidden) {
    overlay.hidden = !show;
    document.getElementById("info").setAttribute("aria-pressed", String(show));
    if (show) updateStats().catch(() => {});
  }
  document.getElementById("info").addEventListener("click", () => toggleOverlay());

  // --- fullscreen (iOS Safari only has it on the video element)
  function toggleFullscreen() {
    if (document.fullscreenElement) return document.exitFullscreen();
    if (main.requestFullscreen) return main.requestFullscreen().catch(() => {});
    if (video.webkitEnterFullscreen) video.webkitEnterFullscreen();
  }
  document.getElementById("fullscreen").addEventListener("click", toggleFullscreen);
  for (const element of [video, document.getElementById("canvas"), document.getElementById("picture")]) {
    element.addEventListener("dblclick", toggleFullscreen);
  }

  // --- snapshot: the server's JPEG of the same camera, downloaded
  async function snapshot() {
    const name = camtrack.camera || (cameras[0] && cameras[0].name);
    const response = await fetch(`cameras/${encodeURIComponent(name)}/snapshot.jpg`, { headers: authHeaders() });
    if (!response.ok) throw new Error(`snapshot: ${response.status}`);
    const url = URL.createObjectURL(await response.blob());
    const link = document.createElement("a");
    const time = new Date().toISOString().replace(/[:.]/g, "-").slice(0, 19);
    link.href = url;
    link.download = `${name}-${time}.jpg`;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }
  document.getElementById("snapshot").addEventListener("click", () => snapshot().catch(console.error));

  // --- recordings: the clips of this camera (static/recordings.js; the token goes with the tab)
  function recordings() {
    const name = camtrack.camera || (cameras[0] && cameras[0].name);
    window.location.href = `recordings${name ? `?camera=${encodeURIComponent(name)}` : ""}`;
  }
  document.getElementById("recordings").addEventListener("click", recordings);

  document.addEventListener("keydown", (event) => {
    if (["SELECT", "INPUT"].includes(event.target.tagName) || event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.key === "i") toggleOverlay();
    if (event.key === "f") toggleFullscreen();
    if (event.key === "s") snapshot().catch(console.error);
    if (event.key === "r") recordings();
  });

  loadCameras();
})();
