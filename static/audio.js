// camtrack viewer: the camera's sound. The page asks for audio beside the video (app.js); the
// video element starts muted (browsers play sound only after a gesture), so one button unmutes it,
// and a level meter in that button shows there is sound before anyone unmutes. The button appears
// once sound arrives; the statistics overlay (ui.js) shows its codec. docs/audio.md.
// While muted the meter shows how much the sound takes (Opus' bytes per packet; a steady quarter for
// G.711, whose packets all have one size): a browser decodes no sound it does not play, so its
// level is known only once unmuted.
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
    } else if (/^PCM[UA]$/i.test(state.codec || "")) {
      // muted G.711 (a camera's own, passed through): every packet has the same size whatever it
      // carries, so the meter says only that sound arrives (a quarter), not how loud it is
      height = 0.25;
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

  // --- push-to-talk: hold the button (or t) and the microphone goes to the camera's back-channel
  // over the same peer (docs/audio.md). The talk token (a permission apart from watching) comes in
  // the page's URL as ?talk=..., moved out of the address bar like the watching token.
  const talkButton = document.getElementById("talk");
  const TALK_KEY = "camtrack-talk-token";
  const params = new URLSearchParams(location.search);
  if (params.has("talk")) {
    sessionStorage.setItem(TALK_KEY, params.get("talk"));
    params.delete("talk");
    const rest = params.toString();
    history.replaceState(null, "", location.pathname + (rest ? "?" + rest : "") + location.hash);
  }
  camtrack.talk = { state: "off", error: null, sent: 0 };
  let microphone = null;
  let talking = false;

  function audioSender() {
    const pc = camtrack.pc;
    if (!pc) return null;
    const transceiver = pc.getTransceivers().find((t) => t.receiver.track && t.receiver.track.kind === "audio");
    return transceiver ? transceiver.sender : null;
  }
  async function startTalking() {
    if (talking) return;
    talking = true;
    talkButton.setAttribute("aria-pressed", "true");
    try {
      if (!microphone) microphone = await navigator.mediaDevices.getUserMedia({ audio: true });
      const sender = audioSender();
      if (!sender || !talking) throw new Error("no WebRTC peer to talk over");
      await sender.replaceTrack(microphone.getAudioTracks()[0]);
      camtrack.ws.send(JSON.stringify({ type: "talk", on: true, token: sessionStorage.getItem(TALK_KEY) }));
      camtrack.talk.sent += 1;
    } catch (error) {
      camtrack.talk.error = String(error.message || error);
      stopTalking();
    }
  }
  function stopTalking() {
    if (!talking) return;
    talking = false;
    talkButton.setAttribute("aria-pressed", "false");
    const sender = audioSender();
    if (sender) sender.replaceTrack(null).catch(() => {});
    if (camtrack.ws && camtrack.ws.readyState === WebSocket.OPEN) camtrack.ws.send(JSON.stringify({ type: "talk", on: false }));
  }
  talkButton.addEventListener("pointerdown", (event) => { event.preventDefault(); startTalking(); });
  for (const end of ["pointerup", "pointerleave", "pointercancel"]) talkButton.addEventListener(end, stopTalking);
  document.addEventListener("keydown", (event) => {
    if (event.key === "t" && !event.repeat && !talkButton.hidden && !talkButton.disabled &&
        !["SELECT", "INPUT"].includes(event.target.tagName)) startTalking();
  });
  document.addEventListener("keyup", (event) => { if (event.key === "t") stopTalking(); });
  document.addEventListener("camtrack:talk", (event) => {
    camtrack.talk.state = event.detail.state;
    if (event.detail.state === "on") camtrack.talk.error = null;
  });
  document.addEventListener("camtrack:error", (event) => {
    if (talking || /talk|busy/.test(event.detail.message)) {
      camtrack.talk.error = event.detail.message; // busy, not allowed: said on the button
      talkButton.title = event.detail.message;
      stopTalking();
    }
  });
  document.addEventListener("camtrack:hello", (event) => {
    talkButton.hidden = !event.detail.talk;
    // browsers give the microphone only to secure pages (HTTPS, localhost): say so instead
    talkButton.disabled = !window.isSecureContext || !navigator.mediaDevices;
    talkButton.title = talkButton.disabled
      ? "Talking needs HTTPS (or localhost): browsers give the microphone only to secure pages"
      : "Hold to talk (t)";
  });
})();
