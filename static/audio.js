// camtrack viewer: the camera's sound. The page asks for audio beside the video (app.js); the
// video element starts muted (browsers play sound only after a gesture), so one button unmutes it,
// and a level meter in that button shows there is sound before anyone unmutes. The button appears
// once sound arrives; the statistics overlay (ui.js) shows its codec. docs/audio.md.
// While muted the meter shows how much the sound takes (Opus' bytes per packet): a browser decodes
// no sound it does not play, so its level is known only once unmuted.
"use strict";

(function () {
  const video = document.getElementById("video");
  const button = document.getElementById("sound");
  const meter = document.getElementById("sound-level");
  const camtrack = window.camtrack;
  camtrack.audio = { level: 0, energy: 0, codec: null, muted: true };

  function setMuted(muted) {
    video.muted = muted;
    const player = camtrack.player;
    if (player && player.sound) player.sound.setMuted(muted); // (the websocket's sound: wsplayer.js)
    camtrack.audio.muted = muted;
    button.setAttribute("aria-pressed", String(!muted));
    button.title = muted ? "Unmute (m)" : "Mute (m)";
    button.setAttribute("aria-label", muted ? "Unmute" : "Mute");
    if (!muted) video.play().catch(() => {});
  }
  button.addEventListener("click", () => setMuted(!video.muted));
  document.addEventListener("keydown", (event) => {
    if (["SELECT", "INPUT"].includes(event.target.tagName) || event.ctrlKey || event.metaKey || event.altKey) return;
    if (event.key === "m" && !button.hidden) setMuted(!video.muted);
  });
  setMuted(true);

  // the level of what arrives (getStats' audioLevel, 0..1), whether or not it is heard
  async function poll() {
    const player = camtrack.player;
    if (camtrack.transport === "websocket" && player && player.sound) {
      // the websocket's sound: the player decodes it, muted or not, and knows its level
      const sound = player.sound;
      if (sound.muted !== video.muted) sound.setMuted(video.muted); // (a player made after a choice)
      button.hidden = !sound.decoded;
      Object.assign(camtrack.audio, { codec: sound.codec, level: sound.level });
      const db = sound.level > 0 ? 20 * Math.log10(sound.level) : -60;
      meter.style.height = `${Math.max(0, Math.min(1, (db + 60) / 60)) * 100}%`;
      return;
    }
    const pc = camtrack.pc;
    let inbound = null;
    let report = null;
    if (pc && camtrack.transport === "webrtc") {
      report = await pc.getStats();
      report.forEach((r) => { if (r.type === "inbound-rtp" && r.kind === "audio") inbound = r; });
    }
    const state = camtrack.audio;
    if (!inbound || !inbound.packetsReceived) {
      button.hidden = true;
      state.level = 0;
      return;
    }
    button.hidden = false;
    const codec = inbound.codecId && report.get(inbound.codecId);
    state.codec = codec ? codec.mimeType.replace("audio/", "") : null;
    state.level = inbound.audioLevel || 0;
    state.energy = inbound.totalAudioEnergy || 0;
    let height;
    if (!video.muted) {
      // what is heard, on a perceptual scale: -60 dBFS .. 0
      const db = state.level > 0 ? 20 * Math.log10(state.level) : -60;
      height = (db + 60) / 60;
    } else {
      // muted, the browser decodes nothing (no level): Opus spends bytes only on sound (a silent
      // 20 ms packet is a few bytes, a sound 60-200), so the bytes per packet show that there is some
      const last = previous;
      previous = inbound;
      if (!last || inbound.packetsReceived <= last.packetsReceived) return;
      const size = (inbound.bytesReceived - last.bytesReceived) / (inbound.packetsReceived - last.packetsReceived);
      height = (size - 8) / 100;
      state.activity = Math.max(0, Math.min(1, height));
    }
    meter.style.height = `${Math.max(0, Math.min(1, height)) * 100}%`;
  }
  let previous = null;
  setInterval(() => poll().catch(() => {}), 200);
})();
