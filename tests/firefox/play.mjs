// Plays camtrack in Debian's firefox-esr, driven by puppeteer-core over WebDriver BiDi, and prints
// what Firefox decoded as one JSON line. Run by tests/test_firefox.py inside a network namespace.
//
//   node play.mjs page URL FRAMES      the page at URL until its peer decoded more than FRAMES
//   node play.mjs whep URL FRAMES      a WHEP client (written here, not the page's) posting to URL,
//                                      run in a blank page of the server's origin
//   node play.mjs overlay URL FRAMES   the page, as `page`; then, for FRAMES pictures the page draws a
//                                      processing result on, the latency stamp read from the picture
//                                      shown and the data's "stamp" ("pairs" in the output)
//
// Output: {"ok": true, "codec": "video/VP8", "frames": N, "width": W, "height": H, "transport": ...,
// "seconds": time from opening to FRAMES decoded, "offered": [codecs in Firefox's offer]} or
// {"ok": false, "error": "...", ...what was seen}.
import puppeteer from "puppeteer-core";

const [mode, url, framesArg, timeoutArg] = process.argv.slice(2);
const FRAMES = Number(framesArg || 30);
const TIMEOUT_MS = Number(timeoutArg || 30) * 1000;

// Firefox's own sources of outside traffic off, autoplay allowed, host addresses not hidden
// behind mDNS names (aiortc cannot resolve them); see /work/shared/WEBRTC-HERE.md
const PREFS = {
  "media.autoplay.default": 0,
  "media.autoplay.blocking_policy": 0,
  "media.peerconnection.ice.obfuscate_host_addresses": false,
  "media.gmp-manager.updateEnabled": false,
  "media.gmp-gmpopenh264.enabled": false,
  "app.update.enabled": false,
  "browser.shell.checkDefaultBrowser": false,
  "datareporting.policy.dataSubmissionEnabled": false,
  "toolkit.telemetry.enabled": false,
  "network.captive-portal-service.enabled": false,
  "network.connectivity-service.enabled": false,
  "browser.safebrowsing.malware.enabled": false,
  "browser.safebrowsing.phishing.enabled": false,
  "extensions.update.enabled": false,
};

// the page's peer (window.camtrack.pc) or the WHEP client's (window.whepPc): what it decoded
const STATS = `(async () => {
  const pc = window.whepPc || (window.camtrack && window.camtrack.pc);
  const video = document.querySelector("video");
  const seen = {frames: 0, codec: null, transport: window.camtrack ? window.camtrack.transport : "whep",
                state: window.camtrack ? window.camtrack.state : (pc ? pc.connectionState : null),
                width: video ? video.videoWidth : 0, height: video ? video.videoHeight : 0,
                offered: window.offeredCodecs || null, error: window.camtrack ? window.camtrack.lastError : window.whepError || null};
  if (!pc) return seen;
  const stats = await pc.getStats();
  stats.forEach((r) => {
    if (r.type === "inbound-rtp" && r.kind === "video") {
      seen.frames = r.framesDecoded || 0;
      if (r.codecId && stats.get(r.codecId)) seen.codec = stats.get(r.codecId).mimeType;
      if (r.frameWidth) { seen.width = r.frameWidth; seen.height = r.frameHeight; }
    }
  });
  return seen;
})()`;

// the codecs of the video m-line of an offer, in order (rtpmap names)
const OFFERED = `(sdp) => [...new Set(sdp.split(/\\r?\\n/).filter((l) => l.startsWith("a=rtpmap:"))
                                   .map((l) => l.split(" ")[1].split("/")[0]))]`;

const WHEP = `async (endpoint) => {
  const pc = window.whepPc = new RTCPeerConnection();
  const video = document.createElement("video");
  video.muted = true;
  video.autoplay = true;
  document.body.appendChild(video);
  pc.ontrack = (event) => { video.srcObject = new MediaStream([event.track]); video.play().catch(() => {}); };
  pc.addTransceiver("video", {direction: "recvonly"});
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((done) => {
    if (pc.iceGatheringState === "complete") return done();
    pc.onicegatheringstatechange = () => pc.iceGatheringState === "complete" && done();
    setTimeout(done, 3000);
  });
  window.offeredCodecs = (${OFFERED})(pc.localDescription.sdp);
  const response = await fetch(endpoint, {method: "POST", body: pc.localDescription.sdp,
                                          headers: {"Content-Type": "application/sdp"}});
  const text = await response.text();
  if (response.status !== 201) { window.whepError = response.status + " " + text; return; }
  window.whepLocation = response.headers.get("Location");
  await pc.setRemoteDescription({type: "answer", sdp: text});
}`;

// each picture the page draws a result on: the stamp read from the picture shown, the data's stamp,
// and whether the result's picture key was the shown picture's
async function drawnPairs(page, deadline) {
  await page.evaluate(`(() => {
    window.pairs = [];
    window.camtrack.overlay.onDraw = (entry) => {
      const result = window.camtrack.overlay.drawnResult;
      window.pairs.push({shown: window.camtrack.readStamp(), data: result.data.stamp, exact: entry.shown === entry.key});
    };
  })()`);
  for (;;) {
    const count = await page.evaluate("window.pairs.length");
    if (count >= FRAMES) return await page.evaluate("window.pairs");
    if (Date.now() > deadline) throw new Error(`the page drew on ${count} pictures in ${TIMEOUT_MS / 1000} s`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

function print(result) {
  process.stdout.write(JSON.stringify(result) + "\n");
}

async function main() {
  const browser = await puppeteer.launch({
    browser: "firefox",
    executablePath: process.env.FIREFOX || "/usr/bin/firefox-esr",
    headless: true,
    extraPrefsFirefox: PREFS,
    protocolTimeout: TIMEOUT_MS + 30000,
  });
  const opened = Date.now();
  let seen = {};
  try {
    const page = await browser.newPage();
    // the page's own offer, as the server gets it (to show that Firefox offers no H.264 here)
    await page.evaluateOnNewDocument(`(() => {
      const create = RTCPeerConnection.prototype.createOffer;
      RTCPeerConnection.prototype.createOffer = async function (...args) {
        const offer = await create.apply(this, args);
        window.offeredCodecs = (${OFFERED})(offer.sdp);
        return offer;
      };
    })()`);
    const deadline = Date.now() + TIMEOUT_MS;
    for (;;) {  // until the server answers
      try {
        await page.goto(mode === "whep" ? new URL("/static/style.css", url).href : url, {timeout: 5000});
        break;
      } catch (error) {
        if (Date.now() > deadline) throw error;
        await new Promise((r) => setTimeout(r, 200));
      }
    }
    if (mode === "whep") await page.evaluate(`(${WHEP})(${JSON.stringify(url)})`);
    const decoding = mode === "overlay" ? 10 : FRAMES;
    for (;;) {
      seen = await page.evaluate(STATS);
      if (seen.frames > decoding) break;
      if (mode !== "whep" && seen.transport && seen.transport !== "webrtc") {
        throw new Error(`the page fell back to ${seen.transport} (server said: ${seen.error})`);
      }
      if (mode === "whep" && seen.error) throw new Error(`WHEP refused: ${seen.error}`);
      if (Date.now() > deadline) throw new Error(`only ${seen.frames} frames decoded in ${TIMEOUT_MS / 1000} s`);
      await new Promise((r) => setTimeout(r, 100));
    }
    const seconds = (Date.now() - opened) / 1000;
    if (mode === "overlay") seen.pairs = await drawnPairs(page, deadline);
    if (mode === "whep") {
      const status = await page.evaluate(`fetch(window.whepLocation, {method: "DELETE"}).then((r) => r.status)`);
      seen.deleted = status;
    }
    print({ok: true, ...seen, seconds, version: await browser.version()});
  } catch (error) {
    print({ok: false, error: String(error && error.message || error), ...seen});
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
}

main().catch((error) => {
  print({ok: false, error: String(error && error.stack || error)});
  process.exit(1);
});
