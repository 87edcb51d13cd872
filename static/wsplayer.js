// camtrack's websocket players: the camera's own packets over /ws (see docs/protocols.md, "When WebRTC
// cannot connect"), decoded with WebCodecs where the page is a secure context, else muxed into
// fragmented MP4 for Media Source Extensions. app.js picks one and feeds it the binary messages.
"use strict";

(function () {
  const HEADER = 24;
  const KEYFRAME = 1;
  const RESYNC = 4;
  const AUDIO = 8; // the camera's sound (asked for with "audio": true)
  const textDecoder = new TextDecoder();

  // One binary message: the header (big-endian), the codec block on keyframes, the picture.
  function parseMessage(buffer) {
    const view = new DataView(buffer);
    if (buffer.byteLength < HEADER || view.getUint8(0) !== 1) throw new Error("not a camtrack video message");
    const flags = view.getUint8(1);
    const block = view.getUint16(2);
    return {
      keyframe: (flags & KEYFRAME) !== 0,
      resync: (flags & RESYNC) !== 0,
      audio: (flags & AUDIO) !== 0,
      seq: view.getUint32(4),
      pts: Number(view.getBigUint64(8)), // 90 kHz
      captured: Number(view.getBigUint64(16)) / 1000, // ms since the epoch
      codec: block ? JSON.parse(textDecoder.decode(new Uint8Array(buffer, HEADER, block))) : null,
      data: new Uint8Array(buffer, HEADER + block),
    };
  }

  // Counters every player keeps, for the overlay.
  function counters() {
    return { frames: 0, bytes: 0, messages: 0, dropped: 0, resyncs: 0, codec: null };
  }

  // The epoch's ms now (the clock the messages' capture times are in; any offset between the
  // server's clock and this one cancels out: only differences of capture times are used)
  const epochNow = () => performance.timeOrigin + performance.now();
  const median = (values) => {
    const sorted = [...values].sort((a, b) => a - b);
    const middle = sorted.length >> 1;
    return sorted.length % 2 ? sorted[middle] : (sorted[middle - 1] + sorted[middle]) / 2;
  };

  // --- the sound beside the WebCodecs picture: Opus decoded as it comes (its level for the meter,
  // muted or not), played through an AudioContext once unmuted (a gesture: audio.js), each packet
  // heard when its capture time plus the pictures' delay (capture to shown) comes, so that a beep and
  // the picture captured with it come out together. Packets follow one another while they stay within
  // SLACK of that time, and are placed again when they part further (a skip, a change of the
  // pictures' delay); one a little late plays at once, a later one is dropped. The pictures are held back
  // (webCodecsPlayer) when the sound cannot be heard as early as they would be shown (`sound.need`).
  const SLACK = 0.03; // s
  const AHEAD = 0.01; // s: the least a packet is scheduled ahead of the context's time
  const MOST_AHEAD = 1.0; // s: the most (a stalled picture's delay must not pile the sound up)
  const LATE = 0.04; // s: a packet later than its time by up to this plays at once, a later one is dropped
  const MARGIN = 15; // ms: the sound's jitter the pictures' hold leaves room for
  function soundPlayer() {
    const sound = { codec: null, level: 0, decoded: 0, played: 0, late: 0, errors: 0, muted: true, lag: null,
                    need: () => 0 };
    let context = null;
    let next = null; // where the next packet follows the last (context time)
    // the capture times (ms since the epoch) of the packets being decoded, in order: one AudioData comes
    // out of each Opus packet, in order (Chromium's output timestamps run on from the first packet's
    // by the samples decoded, across any gap, so they cannot be looked up)
    const captured = [];
    const shown = []; // the newest pictures' delays from capture to shown (ms)
    // the packets' least delay from capture to heard (ms): the most lately seen, falling 100 ms a
    // second after a late one (a hiccup of the page holds the pictures back a while, not for long)
    let needed = null;
    let heardAt = 0; // epochNow() of the last packet scheduled
    // context time <-> the epoch's ms, at the speaker (the output timestamp: when the sample being
    // played now is heard)
    function epochOf(time) {
      const stamp = context.getOutputTimestamp();
      if (stamp.performanceTime) {
        return performance.timeOrigin + stamp.performanceTime + (time - stamp.contextTime) * 1000;
      }
      return epochNow() + (time - context.currentTime + (context.baseLatency || 0) + (context.outputLatency || 0)) * 1000;
    }
    const timeOf = (epoch) => context.currentTime + (epoch - epochOf(context.currentTime)) / 1000;
    // the pictures' hold (ms from capture) the sound needs to be heard with them: what its packets
    // lately needed and a margin, while the sound plays (none when muted, or once it has stopped coming)
    sound.need = () => (!sound.muted && needed !== null && epochNow() - heardAt < 500 ? needed + MARGIN : 0);
    // how far ahead of the context's time the sound scheduled so far ends (s)
    sound.ahead = () => (context && next !== null ? Math.max(0, next - context.currentTime) : 0);
    // a picture shown `delay` ms after its capture
    sound.picture = (delay) => {
      shown.push(delay);
      if (shown.length > 15) shown.shift();
      sound.lag = median(shown);
    };
    // the decoder, made at the first packet and again after a decoding error (the browser closes
    // a decoder that fails: one bad packet from a camera must not silence the rest); its settings
    let decoder = null;
    let config = null;
    const makeDecoder = () => new AudioDecoder({
      output(data) {
        const samples = new Float32Array(data.numberOfFrames);
        data.copyTo(samples, { planeIndex: 0, format: "f32-planar" });
        let sum = 0;
        for (const v of samples) sum += v * v;
        // a meter's level: the newest frame's, or what is left of a louder one before it (falling
        // about 20 dB a second over 20 ms frames): sound that comes in bursts (a beep a second, the
        // socket's batches) still shows between them, whenever the meter looks
        sound.level = Math.max(Math.sqrt(sum / samples.length) * Math.SQRT2, sound.level * 0.95); // (a sine's peak)
        sound.decoded += 1;
        const at = captured.shift();
        if (context && !sound.muted && at !== undefined) {
          const earliest = context.currentTime + AHEAD;
          const least = epochOf(earliest) - at;
          needed = needed === null ? least : Math.max(least, needed - (100 * samples.length) / data.sampleRate);
          heardAt = epochNow();
          // when it is heard with its picture, or as early as it can be if that is earlier (with no
          // picture lately shown, or pictures not yet held back for it)
          const want = timeOf(at + Math.max(sound.lag === null ? 0 : sound.lag, needed + MARGIN));
          let start = next !== null && Math.abs(next - want) <= SLACK ? next : want;
          if (start < earliest && earliest - want <= LATE) start = earliest; // (a little late: at once)
          if (start < earliest || start > context.currentTime + MOST_AHEAD) {
            sound.late += 1; // (too late to be in time, or the pictures' delay is out of bounds: dropped)
            next = null;
          } else {
            const buffer = context.createBuffer(1, samples.length, data.sampleRate);
            buffer.copyToChannel(samples, 0);
            const source = context.createBufferSource();
            source.buffer = buffer;
            source.connect(sound.output);
            source.start(start);
            next = start + buffer.duration;
            sound.played += 1;
          }
        }
        data.close();
      },
      error() {
        sound.errors += 1; // (closed by the browser: made again at the next packet)
        captured.length = 0;
        next = null;
      },
    });
    sound.push = (m) => {
      if (m.codec && !config) {
        sound.codec = m.codec.codec;
        config = { codec: m.codec.codec, sampleRate: m.codec.sampleRate, numberOfChannels: m.codec.numberOfChannels };
      }
      if (!config) return;
      if (!decoder || decoder.state === "closed") {
        decoder = makeDecoder();
        decoder.configure(config);
        captured.length = 0;
      }
      captured.push(m.captured);
      decoder.decode(new EncodedAudioChunk({ type: "key", timestamp: Math.round((m.pts * 1000000) / 48000),
                                             data: m.data }));
    };
    sound.setMuted = (muted) => {
      sound.muted = muted;
      if (!muted && !context) {
        context = new AudioContext();
        sound.context = context; // (where the sound plays, and the node it all goes through: a test taps it)
        sound.output = context.createGain();
        sound.output.connect(context.destination);
      }
      if (context && !muted) context.resume().catch(() => {});
      next = null;
    };
    sound.close = () => {
      if (decoder && decoder.state !== "closed") decoder.close();
      if (context) context.close().catch(() => {});
    };
    return sound;
  }

  // --- WebCodecs: decode each picture as it comes and draw it on a canvas at once, or, while the
  // sound plays and needs longer to be heard than the picture to be shown, when its capture time plus
  // the sound's delay comes (at most HOLD ms later; a copy waits, the decoder's frame is freed)
  const HOLD = 400;
  function webCodecsPlayer({ canvas, onFrame, onError, onPicture }) {
    const stats = counters();
    const sound = window.AudioDecoder ? soundPlayer() : null;
    const context = canvas.getContext("2d");
    let config = null; // the codec block the decoder is configured with
    let waitKey = true; // after a drop or a reconfiguration, only a keyframe can follow
    const captured = new Map(); // a chunk's timestamp (us) -> its capture time (ms since the epoch)
    let newest = -Infinity; // the capture time of the newest picture drawn
    // the pictures held back, each a timer and its copy: cleared and freed at close (a closed player
    // draws nothing more: the canvas may be the next player's)
    const held = new Map();
    let closed = false;
    function draw(image, pts, at, width, height) {
      if (at !== undefined && at < newest) { // (one held longer than a newer one: skipped)
        if (image.close) image.close();
        return;
      }
      if (at !== undefined) newest = at;
      if (canvas.width !== width || canvas.height !== height) {
        canvas.width = width;
        canvas.height = height;
      }
      context.drawImage(image, 0, 0);
      if (image.close) image.close();
      stats.frames += 1;
      if (sound && at !== undefined) sound.picture(epochNow() - at);
      onFrame();
      if (onPicture) onPicture(pts);
    }
    const decoder = new VideoDecoder({
      output(frame) {
        const pts = Math.round((frame.timestamp * 9) / 100); // back to the message's 90 kHz pts
        const at = captured.get(frame.timestamp);
        captured.delete(frame.timestamp);
        const hold = sound && at !== undefined ? Math.min(HOLD, at + sound.need() - epochNow()) : 0;
        const width = frame.displayWidth;
        const height = frame.displayHeight;
        if (hold < 4) {
          draw(frame, pts, at, width, height);
          return;
        }
        const due = epochNow() + hold;
        createImageBitmap(frame).then((bitmap) => {
          if (closed) {
            bitmap.close();
            return;
          }
          const timer = setTimeout(() => {
            held.delete(timer);
            draw(bitmap, pts, at, width, height);
          }, Math.max(0, due - epochNow()));
          held.set(timer, bitmap);
        }, () => {}).finally(() => frame.close());
      },
      error(error) {
        onError(`decoder: ${error.message || error}`);
      },
    });
    return {
      kind: "webcodecs",
      element: canvas,
      stats,
      // the sound, when the server sends it (app.js asks where AudioDecoder exists)
      sound,
      size: () => [canvas.width, canvas.height],
      push(buffer) {
        if (closed) return;
        const m = parseMessage(buffer);
        if (m.audio) {
          if (sound) sound.push(m);
          return;
        }
        stats.messages += 1;
        stats.bytes += buffer.byteLength;
        if (m.resync) stats.resyncs += 1;
        if (m.codec && (!config || m.codec.codec !== config.codec || m.codec.width !== config.width ||
                        m.codec.height !== config.height)) {
          config = m.codec;
          stats.codec = config.codec;
          // no description: H.264 comes in Annex-B form, its SPS and PPS in front of every keyframe
          decoder.configure({ codec: config.codec, optimizeForLatency: true });
          waitKey = true;
        }
        if (!config || decoder.state !== "configured") return;
        // a decoder slower than the stream: drop to the next keyframe rather than fall behind
        if (decoder.decodeQueueSize > 8) waitKey = true;
        if (waitKey && !m.keyframe) {
          stats.dropped += 1;
          return;
        }
        waitKey = false;
        const timestamp = Math.round((m.pts * 100) / 9);
        captured.set(timestamp, m.captured);
        if (captured.size > 100) captured.delete(captured.keys().next().value); // (never decoded)
        decoder.decode(new EncodedVideoChunk({ type: m.keyframe ? "key" : "delta", timestamp, data: m.data }));
      },
      close() {
        closed = true;
        for (const [timer, bitmap] of held) {
          clearTimeout(timer);
          bitmap.close();
        }
        held.clear();
        if (decoder && decoder.state !== "closed") decoder.close();
        if (sound) sound.close();
      },
    };
  }

  // --- fragmented MP4: an init segment (ftyp, moov with avcC) then a moof+mdat per picture
  function box(type, ...parts) {
    const size = 8 + parts.reduce((n, p) => n + p.length, 0);
    const out = new Uint8Array(size);
    new DataView(out.buffer).setUint32(0, size);
    for (let i = 0; i < 4; i++) out[4 + i] = type.charCodeAt(i);
    let at = 8;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }
  const bytes = (...values) => Uint8Array.from(values);
  const u16 = (n) => bytes((n >>> 8) & 255, n & 255);
  const u32 = (n) => bytes((n >>> 24) & 255, (n >>> 16) & 255, (n >>> 8) & 255, n & 255);
  const u64 = (n) => concat(u32(Math.floor(n / 2 ** 32)), u32(n >>> 0));
  const ascii = (s) => Uint8Array.from(s, (c) => c.charCodeAt(0));
  const zeros = (n) => new Uint8Array(n);
  function concat(...parts) {
    const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
    let at = 0;
    for (const p of parts) {
      out.set(p, at);
      at += p.length;
    }
    return out;
  }
  const MATRIX = concat(u32(0x10000), u32(0), u32(0), u32(0), u32(0x10000), u32(0), u32(0), u32(0), u32(0x40000000));
  const TIMESCALE = 90000; // the packets' own clock

  // The NAL units of an Annex-B access unit (start codes of 3 or 4 bytes).
  function nalUnits(data) {
    const units = [];
    let start = -1;
    for (let i = 0; i + 2 < data.length; i++) {
      if (data[i] === 0 && data[i + 1] === 0 && data[i + 2] === 1) {
        if (start >= 0) units.push(data.subarray(start, data[i - 1] === 0 ? i - 1 : i));
        start = i + 3;
        i += 2;
      }
    }
    if (start >= 0) units.push(data.subarray(start));
    return units.filter((u) => u.length > 0);
  }

  function initSegment(sps, pps, width, height) {
    const avcC = box("avcC", bytes(1, sps[1], sps[2], sps[3], 0xff, 0xe1), u16(sps.length), sps,
                     bytes(1), u16(pps.length), pps);
    const avc1 = box("avc1", zeros(6), u16(1), zeros(16), u16(width), u16(height), u32(0x480000), u32(0x480000),
                     u32(0), u16(1), zeros(32), u16(0x18), u16(0xffff), avcC);
    const empty = concat(u32(0), u32(0));
    const stbl = box("stbl", box("stsd", u32(0), u32(1), avc1), box("stts", empty), box("stsc", empty),
                     box("stsz", u32(0), u32(0), u32(0)), box("stco", empty));
    const minf = box("minf", box("vmhd", u32(1), zeros(8)),
                     box("dinf", box("dref", u32(0), u32(1), box("url ", u32(1)))), stbl);
    const mdia = box("mdia", box("mdhd", u32(0), u32(0), u32(0), u32(TIMESCALE), u32(0), u16(0x55c4), u16(0)),
                     box("hdlr", u32(0), u32(0), ascii("vide"), zeros(12), ascii("camtrack\0")), minf);
    const tkhd = box("tkhd", u32(3), u32(0), u32(0), u32(1), u32(0), u32(0), zeros(8), u16(0), u16(0), u16(0),
                     u16(0), MATRIX, u32(width * 65536), u32(height * 65536));
    const mvhd = box("mvhd", u32(0), u32(0), u32(0), u32(1000), u32(0), u32(0x10000), u16(0x100), zeros(10),
                     MATRIX, zeros(24), u32(2));
    const mvex = box("mvex", box("trex", u32(0), u32(1), u32(1), u32(0), u32(0), u32(0)));
    return concat(box("ftyp", ascii("isom"), u32(0x200), ascii("isom"), ascii("iso6"), ascii("avc1"), ascii("mp41")),
                  box("moov", mvhd, box("trak", tkhd, mdia), mvex));
  }

  function mediaSegment(sequence, decodeTime, duration, sample, keyframe) {
    const flags = keyframe ? 0x02000000 : 0x01010000; // sync sample, or depends on others
    // moof is 100 bytes here; the sample starts after it and mdat's 8-byte header
    const trun = box("trun", u32(0x000701), u32(1), u32(100 + 8), u32(duration), u32(sample.length), u32(flags));
    const traf = box("traf", box("tfhd", u32(0x020000), u32(1)), box("tfdt", u32(0x01000000), u64(decodeTime)), trun);
    return concat(box("moof", box("mfhd", u32(0), u32(sequence)), traf), box("mdat", sample));
  }

  // --- the sound for Media Source Extensions: Opus in fragmented MP4 (an `Opus` sample entry with its
  // `dOps`, 48 kHz), in a source buffer of its own beside the pictures'
  const AUDIO_RATE = 48000;
  function opusInitSegment(channels) {
    const dOps = box("dOps", bytes(0, channels), u16(0), u32(AUDIO_RATE), u16(0), bytes(0));
    const opus = box("Opus", zeros(6), u16(1), zeros(8), u16(channels), u16(16), u16(0), u16(0),
                     u32(AUDIO_RATE * 65536), dOps);
    const empty = concat(u32(0), u32(0));
    const stbl = box("stbl", box("stsd", u32(0), u32(1), opus), box("stts", empty), box("stsc", empty),
                     box("stsz", u32(0), u32(0), u32(0)), box("stco", empty));
    const minf = box("minf", box("smhd", u32(0), u32(0)),
                     box("dinf", box("dref", u32(0), u32(1), box("url ", u32(1)))), stbl);
    const mdia = box("mdia", box("mdhd", u32(0), u32(0), u32(0), u32(AUDIO_RATE), u32(0), u16(0x55c4), u16(0)),
                     box("hdlr", u32(0), u32(0), ascii("soun"), zeros(12), ascii("camtrack\0")), minf);
    const tkhd = box("tkhd", u32(3), u32(0), u32(0), u32(1), u32(0), u32(0), zeros(8), u16(0), u16(0),
                     u16(0x100), u16(0), MATRIX, u32(0), u32(0));
    const mvhd = box("mvhd", u32(0), u32(0), u32(0), u32(1000), u32(0), u32(0x10000), u16(0x100), zeros(10),
                     MATRIX, zeros(24), u32(2));
    const mvex = box("mvex", box("trex", u32(0), u32(1), u32(1), u32(0), u32(0), u32(0)));
    return concat(box("ftyp", ascii("isom"), u32(0x200), ascii("isom"), ascii("iso6"), ascii("Opus")),
                  box("moov", mvhd, box("trak", tkhd, mdia), mvex));
  }

  // A run of Opus packets that follow one another ({time, samples, data}: 48 kHz ticks) as one fragment.
  function opusSegment(sequence, run) {
    const entries = run.flatMap((p) => [u32(p.samples), u32(p.data.length)]);
    const moofSize = 8 + 16 + 8 + 16 + 20 + (20 + 8 * run.length); // moof, mfhd, traf: tfhd, tfdt, trun
    const trun = box("trun", u32(0x000301), u32(run.length), u32(moofSize + 8), ...entries);
    const traf = box("traf", box("tfhd", u32(0x020000), u32(1)), box("tfdt", u32(0x01000000), u64(run[0].time)), trun);
    return concat(box("moof", box("mfhd", u32(0), u32(sequence)), traf), box("mdat", ...run.map((p) => p.data)));
  }

  // The samples (48 kHz) an Opus packet codes: its TOC byte's frame size and count (RFC 6716, 3.1).
  function opusSamples(data) {
    if (!data.length) return 960;
    const config = data[0] >> 3;
    let tenths; // a frame's length, in tenths of a ms
    if (config < 12) tenths = [100, 200, 400, 600][config % 4];
    else if (config < 16) tenths = [100, 200][config % 2];
    else tenths = [25, 50, 100, 200][config % 4];
    const code = data[0] & 3;
    const frames = code === 0 ? 1 : code < 3 ? 2 : (data[1] || 0) & 0x3f;
    return Math.round(Math.max(1, frames) * tenths * 4.8);
  }

  // --- Media Source Extensions: the same packets as fragmented MP4, kept at the live edge
  function msePlayer({ video, hello, onFrame, onError }) {
    const stats = counters();
    const source = new MediaSource();
    const queue = [];
    let buffer = null;
    let params = null; // the SPS and PPS of the init segment appended last
    let waitKey = true;
    let sequence = 0;
    let decodeTime = 0;
    let lastPts = null;
    const shownPts = []; // [decode time, the message's pts] of the segments appended lately
    let frameTicks = TIMESCALE / (hello.fps || 30); // a picture's duration: the measured spacing
    let closed = false;
    let appendedEnd = 0; // where the pictures appended so far end (decode time)
    // the sound (when the camera has some and the browser takes Opus in MP4): its own source buffer,
    // each packet placed on the pictures' timeline by its capture time (through the newest picture's),
    // one after the other, and placed again when they part by more than AUDIO_SLACK (a skip, a stall)
    const AUDIO_SLACK = 0.05;
    const sound = hello.audio && MediaSource.isTypeSupported('audio/mp4; codecs="opus"')
      ? { codec: null, level: 0, decoded: 0, played: 0, muted: true, setMuted(muted) { sound.muted = muted; },
          close() {} }
      : null;
    let audioBuffer = null;
    const audioQueue = []; // the init segment and "trim"s
    let audioRun = []; // packets waiting to be appended
    let audioNext = null; // where the next packet goes (48 kHz ticks), following the last
    let audioSequence = 0;
    let lastPicture = null; // { time (s on the timeline), captured (ms) } of the newest picture queued
    let soundAt = 0; // Date.now() of the last sound message
    video.src = URL.createObjectURL(source);
    const opened = new Promise((resolve) => source.addEventListener("sourceopen", resolve, { once: true }));

    function pump() {
      if (!buffer || buffer.updating || closed) return;
      const next = queue.shift();
      if (!next) return;
      try {
        if (next === "trim") {
          const ranges = buffer.buffered;
          if (ranges.length) buffer.remove(0, Math.max(0, ranges.end(ranges.length - 1) - 4));
          if (audioBuffer) audioQueue.push("trim");
        } else {
          buffer.appendBuffer(next);
          if (next.end !== undefined) appendedEnd = next.end;
        }
      } catch (error) {
        onError(`media source: ${error.message || error}`);
      }
    }

    function pumpAudio() {
      if (!audioBuffer || audioBuffer.updating || closed) return;
      try {
        const next = audioQueue.shift();
        if (next === "trim") {
          const ranges = audioBuffer.buffered;
          if (ranges.length) audioBuffer.remove(0, Math.max(0, ranges.end(ranges.length - 1) - 4));
        } else if (next) {
          audioBuffer.appendBuffer(next);
        } else if (audioRun.length) {
          // the packets that follow one another, in one fragment
          let count = 1;
          while (count < audioRun.length && audioRun[count].time === audioRun[count - 1].time + audioRun[count - 1].samples) {
            count += 1;
          }
          const run = audioRun.splice(0, count);
          audioSequence += 1;
          audioBuffer.appendBuffer(opusSegment(audioSequence, run));
          if (!sound.muted) sound.played += run.length;
        }
      } catch (error) {
        onError(`media source (sound): ${error.message || error}`);
      }
    }

    // Play where the newest picture is: seek there when behind, and trim what was played.
    function keepLive() {
      const ranges = video.buffered;
      if (!ranges.length) return;
      const start = ranges.start(ranges.length - 1);
      const end = ranges.end(ranges.length - 1);
      const lag = end - video.currentTime;
      if (video.currentTime < start || lag > 0.5) video.currentTime = Math.max(start, end - 0.05);
      else video.playbackRate = lag > 0.15 ? 1.25 : 1.0; // catch up gently on small lags
      if (video.paused) video.play().catch(() => {});
      if (end - ranges.start(0) > 12 && !queue.includes("trim")) queue.push("trim");
    }

    let lastTotal = 0;
    video.requestVideoFrameCallback?.(function counted(now, metadata) {
      // presented pictures (the element's own count when it has no callback)
      stats.frames = metadata.presentedFrames;
      if (stats.frames > lastTotal) onFrame();
      lastTotal = stats.frames;
      if (!closed) video.requestVideoFrameCallback(counted);
    });

    // the source buffers, once the media source is open (the init segment waits in the queue); with
    // the sound's beside when it comes within AUDIO_WAIT ms (both are made before anything is appended)
    const AUDIO_WAIT = 600;
    function ensureBuffer(codec) {
      const heard = !sound ? Promise.resolve() : new Promise((resolve) => {
        const began = Date.now();
        (function check() {
          if (sound.decoded || Date.now() - began > AUDIO_WAIT || closed) resolve();
          else setTimeout(check, 20);
        })();
      });
      Promise.all([opened, heard]).then(() => {
        if (closed || buffer) return;
        if (sound && sound.decoded) {
          audioBuffer = source.addSourceBuffer('audio/mp4; codecs="opus"');
          audioBuffer.addEventListener("updateend", pumpAudio);
          audioBuffer.addEventListener("error", () => onError("media source buffer error (sound)"));
          audioQueue.unshift(opusInitSegment(sound.channels || 1));
        }
        buffer = source.addSourceBuffer(`video/mp4; codecs="${codec}"`);
        buffer.mode = "sequence"; // pictures follow one another: no gaps when some were skipped
        buffer.addEventListener("updateend", () => {
          keepLive();
          pump();
        });
        buffer.addEventListener("error", () => onError("media source buffer error"));
        pump();
        pumpAudio();
      }).catch((error) => onError(String(error)));
    }

    // a sound message: counted (the meter shows how many bytes it takes, as over WebRTC while muted:
    // Opus spends a few bytes on silence, 60-200 on sound) and placed after the newest picture
    function pushSound(m) {
      if (m.codec && !sound.codec) {
        sound.codec = m.codec.codec;
        sound.channels = m.codec.numberOfChannels || 1;
      }
      sound.decoded += 1;
      soundAt = Date.now();
      const activity = Math.max(0, Math.min(1, (m.data.length - 8) / 100));
      sound.level = Math.max(activity > 0 ? 10 ** ((activity * 60 - 60) / 20) : 0, sound.level * 0.95);
      if (!lastPicture) return; // (nothing to line it up with yet)
      const mapped = Math.round((lastPicture.time + (m.captured - lastPicture.captured) / 1000) * AUDIO_RATE);
      if (audioNext === null || Math.abs(audioNext - mapped) > AUDIO_SLACK * AUDIO_RATE) audioNext = mapped;
      const samples = opusSamples(m.data);
      if (audioNext >= 0) audioRun.push({ time: audioNext, samples, data: m.data.slice() });
      audioNext += samples;
      if (audioRun.length > 100) audioRun.splice(0, audioRun.length - 100); // (a stalled buffer: the newest)
      pumpAudio();
    }

    // No sound for a while (its source stalled, or has none any more): silence goes on under the
    // pictures, since the element plays only as far as both buffers reach and the picture would stop
    // at the end of the sound
    const SILENCE = Uint8Array.of(0xf8, 0xff, 0xfe); // (an Opus packet of 20 ms of silence)
    function fillSilence() {
      const until = Math.round((lastPicture.time + 0.1) * AUDIO_RATE);
      if (audioNext === null || audioNext < until - AUDIO_RATE) audioNext = Math.round(lastPicture.time * AUDIO_RATE);
      while (audioNext < until) {
        audioRun.push({ time: audioNext, samples: 960, data: SILENCE });
        audioNext += 960;
      }
      pumpAudio();
    }

    return {
      kind: "mse",
      element: video,
      stats,
      // the sound, when the camera has some (app.js asks for it; the element plays it: audio.js unmutes it)
      sound,
      size: () => [video.videoWidth, video.videoHeight],
      // the message pts of the picture at `mediaTime` (a video frame callback's), or null
      ptsAt(mediaTime) {
        const ticks = mediaTime * TIMESCALE + frameTicks / 2;
        for (let i = shownPts.length - 1; i >= 0; i--) {
          if (shownPts[i][0] <= ticks) return shownPts[i][1];
        }
        return null;
      },
      push(bufferData) {
        const m = parseMessage(bufferData);
        if (m.audio) {
          if (sound) pushSound(m);
          return;
        }
        stats.messages += 1;
        stats.bytes += bufferData.byteLength;
        if (m.resync) stats.resyncs += 1;
        const units = nalUnits(m.data);
        if (m.keyframe && m.codec) {
          stats.codec = m.codec.codec;
          const sps = units.find((u) => (u[0] & 0x1f) === 7);
          const pps = units.find((u) => (u[0] & 0x1f) === 8);
          const same = params && sps && pps && params[0].join() === sps.join() && params[1].join() === pps.join();
          if (sps && pps && !same) {
            params = [sps.slice(), pps.slice()];
            const init = initSegment(params[0], params[1], m.codec.width || hello.width, m.codec.height || hello.height);
            init.init = true; // kept when the queue is dropped
            queue.push(init);
            ensureBuffer(m.codec.codec);
          }
        }
        if (!params) return;
        if (lastPts !== null) {
          const ticks = m.pts - lastPts;
          // a start run is squeezed one tick apart: only real spacings teach the picture duration
          if (ticks > TIMESCALE / 200 && ticks < TIMESCALE) frameTicks = 0.9 * frameTicks + 0.1 * ticks;
        }
        lastPts = m.pts;
        // MSE slower than the stream: drop to the next keyframe rather than queue
        if (queue.length > 30) {
          queue.splice(0, queue.length, ...queue.filter((item) => item.init));
          waitKey = true;
          decodeTime = appendedEnd; // (what was dropped takes no time: the timeline goes on from what was appended)
          lastPicture = null;
        }
        if (waitKey && !m.keyframe) {
          stats.dropped += 1;
          return;
        }
        waitKey = false;
        const samples = units.filter((u) => ![7, 8, 9].includes(u[0] & 0x1f)); // parameter sets are in avcC
        const sample = concat(...samples.flatMap((u) => [u32(u.length), u]));
        const duration = Math.max(1, Math.round(frameTicks));
        sequence += 1;
        shownPts.push([decodeTime, m.pts]);
        if (shownPts.length > 300) shownPts.splice(0, shownPts.length - 300);
        const segment = mediaSegment(sequence, decodeTime, duration, sample, m.keyframe);
        segment.end = decodeTime + duration;
        queue.push(segment);
        lastPicture = { time: decodeTime / TIMESCALE, captured: m.captured };
        decodeTime += duration;
        if (audioBuffer && Date.now() - soundAt > 300) fillSilence();
        pump();
      },
      close() {
        closed = true;
        queue.length = 0;
        video.removeAttribute("src");
        video.load();
      },
    };
  }

  // Which player this browser can use for `codec` ("h264" or "vp8"), best first.
  function choose(codec) {
    const forced = new URLSearchParams(location.search).get("decoder");
    if (forced) return forced;
    if (window.VideoDecoder && window.EncodedVideoChunk) return "webcodecs";
    if (codec === "h264" && window.MediaSource && MediaSource.isTypeSupported('video/mp4; codecs="avc1.42e01f"')) {
      return "mse";
    }
    return "mjpeg";
  }

  window.CamtrackPlayers = {
    choose,
    create(kind, options) {
      if (kind === "webcodecs") return webCodecsPlayer(options);
      if (kind === "mse") return msePlayer(options);
      throw new Error(`no websocket player ${kind}`);
    },
    parseMessage,
    initSegment,
    nalUnits,
  };
})();
