// camtrack viewer: negotiates a receive-only WebRTC video over /ws and reconnects on failure.
// The protocol is described in the README ("Signaling protocol").
"use strict";

const video = document.getElementById("video");
const statusEl = document.getElementById("status");
const RETRY_MIN_MS = 500;
const RETRY_MAX_MS = 5000;
const DISCONNECTED_GRACE_MS = 4000;

// Exposed for tests and for curious people in the console.
const camtrack = (window.camtrack = {
  state: "connecting", pc: null, ws: null, connects: 0, lastError: null, hello: null,
  camera: new URLSearchParams(location.search).get("camera"), // null: the server's first camera
  token: () => sessionStorage.getItem(TOKEN_KEY),
  switchCamera,
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

function setState(state, detail) {
  camtrack.state = state;
  statusEl.className = "status " + state;
  statusEl.textContent = detail ? `${state}: ${detail}` : state;
}

function wsUrl() {
  const proto = location.protocol === "https:" ? "wss:" : "ws:";
  const query = camtrack.camera ? `?camera=${encodeURIComponent(camtrack.camera)}` : "";
  return `${proto}//${location.host}/ws${query}`;
}

function send(ws, message) {
  if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify(message));
}

function teardown() {
  clearTimeout(disconnectTimer);
  const { ws, pc } = camtrack;
  camtrack.ws = camtrack.pc = null;
  if (pc) {
    pc.onconnectionstatechange = pc.onicecandidate = pc.ontrack = null;
    pc.close();
  }
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
  camtrack.ws = ws;
  // always authenticate first: a server without a token ignores it, one with a token needs it
  ws.onopen = () => send(ws, { type: "auth", token: sessionStorage.getItem(TOKEN_KEY) || "" });
  ws.onmessage = (event) => {
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
  ws.onclose = () => reconnect("connection to server lost");
}

async function handle(ws, message) {
  switch (message.type) {
    case "hello":
      camtrack.hello = message;
      camtrack.camera = message.camera || camtrack.camera;
      document.dispatchEvent(new CustomEvent("camtrack:hello", { detail: message }));
      await startPeer(ws, message);
      break;
    case "answer":
      if (camtrack.ws === ws && camtrack.pc) {
        await camtrack.pc.setRemoteDescription({ type: "answer", sdp: message.sdp });
      }
      break;
    case "error":
      camtrack.lastError = message.message;
      console.warn("camtrack server:", message.message);
      if (message.message === "server full") {
        retries = Math.max(retries, 3); // back off harder
        reconnect("server full", "full");
      } else if (message.message.startsWith("unauthorized")) {
        stop("unauthorized", "open this page with ?token=...");
      }
      break;
    case "bye":
      reconnect("server hung up");
      break;
  }
}

async function startPeer(ws, hello) {
  const pc = new RTCPeerConnection({ iceServers: hello.iceServers || [] });
  camtrack.pc = pc;
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.ontrack = (event) => {
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
      retries = 0;
      camtrack.connects += 1;
      setState("live");
    } else if (state === "disconnected") {
      setState("connecting", "connection interrupted");
      disconnectTimer = setTimeout(() => reconnect("connection lost"), DISCONNECTED_GRACE_MS);
    } else if (state === "failed") {
      reconnect("connection failed");
    }
  };
  const offer = await pc.createOffer();
  await pc.setLocalDescription(offer);
  if (camtrack.pc !== pc) return; // replaced while we waited
  send(ws, { type: "offer", sdp: pc.localDescription.sdp });
  offered = true;
  pending.splice(0).forEach((message) => send(ws, message));
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
