// camtrack viewer: negotiates a receive-only WebRTC video over /ws and reconnects on failure.
// When WebRTC does not connect within FALLBACK_MS (UDP blocked), or the page is opened with
// ?transport=ws, the same socket carries the camera's packets instead (wsplayer.js plays them),
// and a browser that can play neither shows the MJPEG stream.
// The protocol is described in docs/protocols.md ("Signaling protocol"). A camera's processing
// results come on a data channel of the peer (or as text messages on the websocket) and go to
// overlay.js, which draws them over the picture they describe.
"use strict";

const video = document.getElementById("video");
const canvas = document.getElementById("canvas");
const picture = document.getElementById("picture");
const statusEl = document.getElementById("status");
const RETRY_MIN_MS = 500;
const RETRY_MAX_MS = 5000;
const DISCONNECTED_GRACE_MS = 4000;
const FALLBACK_MS = 3000;
// a WebRTC attempt that fails outright before connecting is tried once more (one can fail by bad
// luck: a busy machine, a network change); the second such failure in a row means the websocket
const FAILED_ATTEMPTS = 2;
const pageParams = new URLSearchParams(location.search);

// Exposed for tests and for curious people in the console.
const camtrack = (window.camtrack = {
  state: "connecting", pc: null, ws: null, connects: 0, lastError: null, hello: null,
  camera: pageParams.get("camera"), // null: the server's first camera
  // the quality tier (docs/quality.md): what this page asks for (auto, main, low; ?quality= or the
  // picker), and what the server says it is on and why ({choice, tier, reason, moving_to, qualities})
  qualityChoice: pageParams.get("quality") || sessionStorage.getItem("camtrack-quality") || "auto",
  quality: null,
  setQuality,
  token: () => sessionStorage.getItem(TOKEN_KEY),
  switchCamera,
  // "webrtc", "websocket" (the packets over /ws) or "mjpeg"; `decoder` says how they play
  transport: null, decoder: null, player: null,
  // once WebRTC failed to connect, this page keeps to the websocket (its network blocks UDP)
  streamOnly: pageParams.get("transport") === "ws" || !window.RTCPeerConnection,
  // what shows the picture now, and its size (the latency readout and the overlay use it)
  view() {
    if (camtrack.decoder === "webcodecs") return { element: canvas, width: canvas.width, height: canvas.height };
    if (camtrack.decoder === "mjpeg") return { element: picture, width: picture.naturalWidth, height: picture.naturalHeight };
    return { element: video, width: video.videoWidth, height: video.videoHeight };
  },
});

// A token in the page's URL (/?token=...) is moved out of the address bar and sent as the
// first websocket message, so it stays out of history, screenshots and server logs.
const TOKEN_KEY = "camtrack-token";
(function takeToken() {
  const params = new URLSearchParams(location.search);
  const token = params.get("token");
  if (token === null) return;
  sessionStorage.setItem(TOKEN_KEY, token);
  params.delete("token");
  const rest = params.toString();
  history.replaceState(null, "", location.pathname + (rest ? "?" + rest : "") + location.hash);
})();

let retries = 0;
let retryTimer = null;
let disconnectTimer = null;
let fallbackTimer = null;
let failedAttempts = 0; // WebRTC attempts in a row that failed before connecting

function setState(state, detail) {
  camtrack.state = state;
  statusEl.className = "status " + state;
  statusEl.textContent = detail ? `${state}: ${detail}` : state;
}

function wsUrl() {
  // relative to the page: under a reverse proxy's path prefix (--base-path), the prefix's /ws
  const url = new URL("ws", location.href);
  url.protocol = location.protocol === "https:" ? "wss:" : "ws:";
  url.search = camtrack.camera ? `?camera=${encodeURIComponent(camtrack.camera)}` : "";
  return url.href;
}

function send(ws, message) {
  if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(message));
}

function closePeer() {
  clearTimeout(fallbackTimer);
  const pc = camtrack.pc;
  camtrack.pc = null;
  if (pc) {
    pc.onconnectionstatechange = pc.onicecandidate = pc.ontrack = null;
    if (camtrack.channel) camtrack.channel.onmessage = null;
    camtrack.channel = null;
    pc.close();
    video.srcObject = null; // (it would hide a media source's picture)
  }
}

function show(element) {
  for (const e of [video, canvas, picture]) e.hidden = e !== element;
}

function stopPlayer() {
  if (camtrack.player) camtrack.player.close();
  camtrack.player = null;
  if (picture.getAttribute("src")) picture.removeAttribute("src");
  show(video);
}

// a processing result or status, from the data channel or the websocket (overlay.js draws them)
function receiveData(message) {
  if (camtrack.overlay) camtrack.overlay.receive(message);
}

function teardown() {
  clearTimeout(disconnectTimer);
  if (camtrack.overlay) camtrack.overlay.reset();
  closePeer();
  stopPlayer();
  const ws = camtrack.ws;
  camtrack.ws = null;
  if (ws) {
    ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
    if (ws.readyState === WebSocket.OPEN) send(ws, { type: "bye" });
    ws.close();
  }
}

function stop(state, detail) {
  teardown();
  clearTimeout(retryTimer);
  retryTimer = null;
  setState(state, detail);
  statusEl.classList.add("error");
}

function reconnect(reason, state = "reconnecting") {
  teardown();
  if (retryTimer) return;
  const delay = Math.min(RETRY_MAX_MS, RETRY_MIN_MS * 2 ** retries) * (0.8 + 0.4 * Math.random());
  retries += 1;
  setState(state, `${reason}, retrying in ${(delay / 1000).toFixed(1)} s`);
  retryTimer = setTimeout(() => {
    retryTimer = null;
    connect();
  }, delay);
}

function connect() {
  teardown();
  setState("connecting");
  const ws = new WebSocket(wsUrl());
  ws.binaryType = "arraybuffer";
  camtrack.ws = ws;
  // always authenticate first: a server without a token ignores it, one with a token needs it
  let opened = false;
  ws.onopen = () => {
    opened = true;
    send(ws, { type: "auth", token: sessionStorage.getItem(TOKEN_KEY) || "" });
  };
  ws.onmessage = (event) => {
    if (typeof event.data !== "string") {
      if (camtrack.ws !== ws || !camtrack.player) return;
      try {
        camtrack.player.push(event.data);
      } catch (error) {
        console.error(error);
        reconnect(String(error.message || error));
      }
      return;
    }
    let message;
    try {
      message = JSON.parse(event.data);
    } catch {
      return;
    }
    handle(ws, message).catch((error) => {
      if (camtrack.ws !== ws) return; // an old connection's late failure: not ours to act on
      console.error(error);
      reconnect(String(error.message || error));
    });
  };
  ws.onclose = () => {
    if (opened) return reconnect("connection to server lost");
    // never opened: a browser does not show why, so ask (a refused Origin behind a proxy, say)
    refusal().then((why) => {
      if (camtrack.ws === ws) reconnect(why || "cannot reach the server", why ? "refused" : "reconnecting");
    });
  };
}

// why the server refuses this page's websocket (POST ws: the same Origin check), or null
async function refusal() {
  try {
    const response = await fetch(new URL("ws", location.href), { method: "POST" });
    if (response.status === 403) return (await response.text()).trim().slice(0, 400);
  } catch {
    // not reachable: the usual reconnecting
  }
  return null;
}

async function handle(ws, message) {
  switch (message.type) {
    case "hello":
      camtrack.hello = message;
      camtrack.camera = message.camera || camtrack.camera;
      document.dispatchEvent(new CustomEvent("camtrack:hello", { detail: message }));
      if (camtrack.qualityChoice !== "auto" && (message.qualities || []).includes(camtrack.qualityChoice)) {
        send(ws, { type: "quality", quality: camtrack.qualityChoice }); // (before the offer: it starts there)
      }
      if (camtrack.streamOnly) startStream(ws, message);
      else await startPeer(ws, message);
      break;
    case "quality":
      if (camtrack.ws === ws) setQualityState(message);
      break;
    case "answer":
      if (message.quality && camtrack.ws === ws) setQualityState(message.quality);
      if (camtrack.ws === ws && camtrack.pc) {
        await camtrack.pc.setRemoteDescription({ type: "answer", sdp: message.sdp });
      }
      break;
    case "talk": // (push-to-talk: audio.js)
      document.dispatchEvent(new CustomEvent("camtrack:talk", { detail: message }));
      break;
    case "error":
      camtrack.lastError = message.message;
      document.dispatchEvent(new CustomEvent("camtrack:error", { detail: message }));
      console.warn("camtrack server:", message.message);
      if (message.message === "server full") {
        retries = Math.max(retries, 3); // back off harder
        reconnect("server full", "full");
      } else if (message.message.startsWith("unauthorized")) {
        const sent = Boolean(sessionStorage.getItem(TOKEN_KEY));
        stop("unauthorized", sent ? "wrong token" : "this camera needs a token");
        askToken(sent ? "wrong token, try again" : "");
      }
      break;
    case "data":
    case "processing":
      if (camtrack.ws === ws) receiveData(message);
      break;
    case "bye":
      if (camtrack.transport === "webrtc" && !camtrack.peerConnected) {
        // the server's side of WebRTC gave up before connecting (UDP blocked there, or the
        // negotiation timed out): again, or come back for the packets over the websocket
        failedAttempts += 1;
        if (failedAttempts >= FAILED_ATTEMPTS) camtrack.streamOnly = true;
        reconnect("WebRTC could not connect");
      } else {
        reconnect("server hung up");
      }
      break;
  }
}

// WebRTC could not connect (or is not wanted): the camera's packets over this same socket.
function startStream(ws, hello) {
  closePeer();
  const codec = (hello.codecs || [])[0];
  let kind = hello.stream ? CamtrackPlayers.choose(codec) : "mjpeg";
  if (kind === "mse" && codec !== "h264") kind = "mjpeg"; // the muxer writes H.264 only
  if (kind === "mjpeg") return startMjpeg(ws, hello);
  camtrack.transport = "websocket";
  camtrack.decoder = kind;
  let live = false;
  camtrack.player = CamtrackPlayers.create(kind, {
    video, canvas, hello,
    onFrame() {
      if (live || camtrack.ws !== ws) return;
      live = true;
      retries = 0;
      camtrack.connects += 1;
      setState("live");
    },
    onError(reason) {
      if (camtrack.ws === ws) reconnect(reason);
    },
    // a picture drawn (WebCodecs): its presentation time, which the results sent beside it name
    onPicture(pts) {
      if (camtrack.ws === ws && camtrack.overlay) camtrack.overlay.picture("pts", pts);
    },
  });
  show(camtrack.player.element);
  // the sound too where the player can play it (WebCodecs' AudioDecoder, or MSE with Opus in MP4: audio.js unmutes it)
  const sound = Boolean(hello.audio && camtrack.player.sound);
  send(ws, sound ? { type: "stream", audio: true } : { type: "stream" });
}

// Neither WebCodecs nor MSE (nor WebRTC): the server's MJPEG, which an <img> plays by itself.
function startMjpeg(ws, hello) {
  camtrack.transport = camtrack.decoder = "mjpeg";
  // the socket has nothing more to carry: hang it up (its closing is no reason to reconnect)
  ws.onmessage = ws.onclose = ws.onerror = null;
  send(ws, { type: "bye" });
  ws.close();
  camtrack.ws = null;
  const token = sessionStorage.getItem(TOKEN_KEY);
  // an <img> cannot send a header: the token goes in its URL (the server keeps it out of its log)
  const query = token ? `?token=${encodeURIComponent(token)}` : "";
  picture.onload = () => {
    retries = 0;
    camtrack.connects += 1;
    setState("live");
  };
  picture.onerror = () => reconnect("the MJPEG stream ended");
  picture.src = `cameras/${encodeURIComponent(hello.camera)}/mjpeg${query}`;
  show(picture);
}

async function startPeer(ws, hello) {
  camtrack.transport = "webrtc";
  camtrack.decoder = "webrtc";
  const pc = new RTCPeerConnection({ iceServers: hello.iceServers || [] });
  camtrack.pc = pc;
  // no connection within FALLBACK_MS of the offer (UDP blocked, no usable candidate): use the websocket
  const fallBack = (why) => {
    if (camtrack.pc !== pc || camtrack.ws !== ws) return;
    console.info(`camtrack: WebRTC ${why}; playing over the websocket`);
    camtrack.streamOnly = true;
    startStream(ws, hello);
  };
  let connected = false;
  camtrack.peerConnected = false;
  pc.addTransceiver("video", { direction: "recvonly" });
  // the camera's sound, if it has any, and the viewer's own once it talks to the camera (audio.js)
  pc.addTransceiver("audio", { direction: hello.talk ? "sendrecv" : "recvonly" });
  // the camera's processing results: newest wins, so neither ordered nor retransmitted
  const channel = pc.createDataChannel("camtrack", { ordered: false, maxRetransmits: 0 });
  camtrack.channel = channel;
  channel.onmessage = (event) => {
    if (camtrack.pc !== pc || typeof event.data !== "string") return;
    try {
      receiveData(JSON.parse(event.data));
    } catch {
      // not JSON: nothing to draw
    }
  };
  pc.ontrack = (event) => {
    // (the server sends its audio and video in one stream: the browser keeps them in sync)
    if (event.streams[0] && video.srcObject === event.streams[0]) return;
    video.srcObject = event.streams[0] || new MediaStream([event.track]);
    video.play().catch(() => {});
  };
  // candidates found before the offer is sent wait for it
  let offered = false;
  const pending = [];
  pc.onicecandidate = (event) => {
    const c = event.candidate;
    const message = c
      ? { type: "candidate", candidate: c.candidate, sdpMid: c.sdpMid, sdpMLineIndex: c.sdpMLineIndex }
      : { type: "candidate", candidate: null };
    if (c && !c.candidate) return; // Chrome's empty end-of-generation marker
    if (offered) send(ws, message);
    else pending.push(message);
  };
  pc.onconnectionstatechange = () => {
    const state = pc.connectionState;
    clearTimeout(disconnectTimer);
    if (state === "connected") {
      clearTimeout(fallbackTimer);
      connected = camtrack.peerConnected = true;
      failedAttempts = 0;
      retries = 0;
      camtrack.connects += 1;
      setState("live");
    } else if (state === "disconnected") {
      setState("connecting", "connection interrupted");
      disconnectTimer = setTimeout(() => reconnect("connection lost"), DISCONNECTED_GRACE_MS);
    } else if (state === "failed") {
      if (!connected && ++failedAttempts >= FAILED_ATTEMPTS) fallBack("failed to connect twice");
      else reconnect("connection failed");
    }
  };
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  if (camtrack.pc !== pc) return; // replaced while we waited
  send(ws, { type: "offer", sdp: pc.localDescription.sdp });
  offered = true;
  // counted from the offer: the page's own start-up is not the network's fault
  fallbackTimer = setTimeout(() => {
    // ICE through but DTLS still going (a busy machine): that is no blocked network, let it finish
    if (["connected", "completed"].includes(pc.iceConnectionState)) return;
    fallBack(`ICE did not connect within ${FALLBACK_MS / 1000} s`);
  }, FALLBACK_MS);
  pending.splice(0).forEach((message) => send(ws, message));
}

// A missing or wrong token: a field to type it in (kept for this tab, like one from ?token=).
const tokenForm = document.getElementById("token-form");
function askToken(why) {
  document.getElementById("token-why").textContent = why ? ` (${why})` : "";
  tokenForm.hidden = false;
  const input = document.getElementById("token");
  input.value = "";
  input.focus();
}
tokenForm.addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value);
  tokenForm.hidden = true;
  retries = 0;
  document.dispatchEvent(new CustomEvent("camtrack:token"));
  connect();
});

function setQualityState(quality) {
  camtrack.quality = quality;
  document.dispatchEvent(new CustomEvent("camtrack:quality", { detail: quality }));
}

// The viewer picks a quality: auto (the server moves it from what its link reports), main or low.
function setQuality(choice) {
  camtrack.qualityChoice = choice;
  sessionStorage.setItem("camtrack-quality", choice);
  if (camtrack.ws) send(camtrack.ws, { type: "quality", quality: choice });
}

function switchCamera(name) {
  if (name === camtrack.camera) return;
  camtrack.camera = name;
  const params = new URLSearchParams(location.search);
  params.set("camera", name);
  history.replaceState(null, "", location.pathname + "?" + params.toString() + location.hash);
  clearTimeout(retryTimer);
  retryTimer = null;
  retries = 0;
  connect();
}

window.addEventListener("pagehide", teardown);
// back to a page restored from the back/forward cache: its connection was torn down on the way out
window.addEventListener("pageshow", (event) => {
  if (event.persisted) connect();
});
connect();
