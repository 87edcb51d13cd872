// The recordings page (/recordings): the clips of /api/recordings, newest first, by camera and
// kind; a clip plays in place (the file itself, with HTTP ranges), downloads, is protected from
// retention or deleted. The token is the live page's (this tab's), or ?token= in this page's URL.
"use strict";

const TOKEN_KEY = "camtrack-token";
const LIMIT = 48;
const state = { page: 1, clips: [] };
window.camtrackRecordings = state;

(function takeToken() {
  const params = new URLSearchParams(location.search);
  const token = params.get("token");
  if (token !== null) {
    sessionStorage.setItem(TOKEN_KEY, token);
    params.delete("token");
  }
  const camera = params.get("camera");
  if (camera) state.camera = camera;
  history.replaceState(null, "", location.pathname + (params.toString() ? `?${params}` : ""));
})();

function token() { return sessionStorage.getItem(TOKEN_KEY); }
function headers() { return token() ? { Authorization: `Bearer ${token()}` } : {}; }
// a <video> or an <img> cannot send a header: the token goes in the URL
function withToken(url) { return token() ? `${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token())}` : url; }
function clipUrl(id) { return `api/recordings/${encodeURIComponent(id)}`; }

const $ = (id) => document.getElementById(id);
const status = (text) => { $("status").textContent = text; };

async function api(path, options = {}) {
  const response = await fetch(path, { ...options, headers: { ...headers(), ...(options.headers || {}) } });
  if (response.status === 401) throw new Error("this server needs a token: open the live page with ?token=…, then come back");
  if (!response.ok) throw new Error(`${response.status} ${(await response.text()).trim()}`);
  return response.status === 204 ? null : response.json();
}

async function loadCameras() {
  const { cameras } = await api("api/cameras");
  for (const camera of cameras) {
    const option = document.createElement("option");
    option.value = option.textContent = camera.name;
    $("camera").append(option);
  }
  if (state.camera) $("camera").value = state.camera;
}

function describe(clip) {
  const start = new Date(clip.start * 1000);
  const about = document.createElement("div");
  about.className = "about";
  const when = document.createElement("div");
  when.textContent = `${clip.camera} · ${start.toLocaleString()} · ${clip.duration.toFixed(1)} s`;
  if (clip.recording) {
    const live = document.createElement("span");
    live.className = "recording";
    live.textContent = " · recording";
    when.append(live);
  }
  const kinds = document.createElement("div");
  for (const kind of clip.kinds || []) {
    const tag = document.createElement("span");
    tag.className = "kind";
    tag.textContent = kind;
    kinds.append(tag);
  }
  about.append(when, kinds);
  return about;
}

function render() {
  const list = $("clips");
  list.replaceChildren();
  for (const clip of state.clips) {
    const item = document.createElement("li");
    item.dataset.id = clip.id;
    const thumb = document.createElement("img");
    thumb.alt = `${clip.camera} at ${new Date(clip.start * 1000).toLocaleString()}`;
    thumb.loading = "lazy";
    thumb.src = withToken(`${clipUrl(clip.id)}/thumbnail.jpg`);
    thumb.addEventListener("click", () => play(clip, item));
    const actions = document.createElement("div");
    actions.className = "actions";
    const playButton = button("Play", () => play(clip, item));
    const download = document.createElement("a");
    download.textContent = "Download";
    download.href = withToken(`${clipUrl(clip.id)}?download=1`);
    const protect = button(clip.protected ? "Unprotect" : "Protect", () => setProtected(clip, !clip.protected));
    protect.className = "protect";
    const remove = button("Delete", () => remove_(clip));
    remove.className = "delete";
    remove.disabled = clip.recording;
    actions.append(playButton, download, protect, remove);
    item.append(thumb, describe(clip), actions);
    list.append(item);
  }
}

function button(text, action) {
  const element = document.createElement("button");
  element.type = "button";
  element.textContent = text;
  element.addEventListener("click", action);
  return element;
}

function play(clip, item) {
  const player = $("player");
  player.hidden = false;
  player.src = withToken(clipUrl(clip.id));
  player.play().catch(() => {});
  state.playing = clip.id;
  for (const other of document.querySelectorAll("li.playing")) other.classList.remove("playing");
  item.classList.add("playing");
  $("live").href = `./?camera=${encodeURIComponent(clip.camera)}`;
  player.scrollIntoView({ block: "nearest" });
}

async function setProtected(clip, protect) {
  try {
    const updated = await api(`${clipUrl(clip.id)}/protect`, { method: protect ? "POST" : "DELETE" });
    Object.assign(clip, updated);
    render();
  } catch (error) { status(`${error.message}`); }
}

async function remove_(clip) {
  if (!confirm(`Delete the clip of ${clip.camera} at ${new Date(clip.start * 1000).toLocaleString()}?`)) return;
  try {
    await api(clipUrl(clip.id), { method: "DELETE" });
    state.clips = state.clips.filter((other) => other.id !== clip.id);
    render();
  } catch (error) { status(`${error.message}`); }
}

async function load(more = false) {
  state.page = more ? state.page + 1 : 1;
  const query = new URLSearchParams({ page: state.page, limit: LIMIT });
  const camera = $("camera").value, kind = $("kind").value.trim();
  if (camera) query.set("camera", camera);
  if (kind) query.set("kind", kind);
  try {
    const body = await api(`api/recordings?${query}`);
    state.clips = more ? state.clips.concat(body.recordings) : body.recordings;
    state.total = body.total;
    render();
    status(body.total ? `${body.total} clip${body.total === 1 ? "" : "s"}` : "no clips yet");
    $("more").hidden = state.clips.length >= body.total;
  } catch (error) { status(error.message); }
}

$("refresh").addEventListener("click", () => load());
$("camera").addEventListener("change", () => {
  $("live").href = $("camera").value ? `./?camera=${encodeURIComponent($("camera").value)}` : "./";
  load();
});
$("kind").addEventListener("change", () => load());
$("more").addEventListener("click", () => load(true));
loadCameras().catch((error) => status(error.message)).finally(() => load());
