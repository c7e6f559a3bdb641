// "Talk to this agent" by voice: a WebRTC call through this origin's API (non-trickle ICE).
//
//   POST   /v1/agents/{agent_id}/web-calls  {"sdp", "type": "offer"}  -> 201 {"call_id", "sdp", "type": "answer"}
//   DELETE /v1/web-calls/{call_id}                                    -> hang up
//
// The page also records the agent's audio as it is received (16 kHz mono, at most MAX_RECORD_S seconds), so tests and
// benchmarks can judge what a caller actually heard: window.receivedAudioWav() returns it as a base64 WAV, and
// window.talkState() says where the call is; window.talkTimeline() puts the recording on the page's clock (when the
// microphone opened, and for each recorded block its end sample and Date.now() when it was recorded). Add ?raw=1 to the page's URL to turn off the browser's echo
// cancellation, noise suppression and gain control (for a fake microphone fed from a file).
"use strict";

(() => {
  const root = document.getElementById("talk");
  if (!root) return;
  const agentId = root.dataset.agentId;
  const $ = (id) => document.getElementById(id);
  const statusEl = $("talk-status");
  const startBtn = $("talk-start");
  const hangupBtn = $("talk-hangup");
  const audioEl = $("talk-audio");
  const levelEl = $("talk-level");
  const errorEl = $("talk-error");
  const callEl = $("talk-call");
  const callLink = $("talk-call-link");

  const RECORD_RATE = 16000;
  const MAX_RECORD_S = 600; // bounded: 600 s of Float32 at 16 kHz is 38 MB
  const ICE_GATHERING_TIMEOUT_MS = 5000;
  const raw = new URLSearchParams(window.location.search).get("raw") === "1";

  let pc = null;
  let mic = null;
  let callId = null;
  let state = "idle";
  const received = { chunks: [], samples: 0, startedAt: null, ctx: null, node: null, clock: [] };
  let micStartedAt = null; // ms since the epoch when the microphone opened (a fake one fed from a file starts then)

  function setState(next, text) {
    state = next;
    statusEl.dataset.state = next;
    statusEl.textContent = text || next;
  }

  function showError(err) {
    errorEl.hidden = false;
    errorEl.textContent = err && err.message ? err.message : String(err);
  }

  // ---- what the page hears: the agent's audio, recorded as received
  function startRecording(stream) {
    stopRecording();
    received.chunks = [];
    received.samples = 0;
    received.clock = [];
    const ctx = new AudioContext({ sampleRate: RECORD_RATE });
    const source = ctx.createMediaStreamSource(stream);
    // ScriptProcessorNode runs on the main thread but needs no module file (the CSP allows scripts from /static
    // only, and an AudioWorklet would be a second file for 20 lines); 2048 samples = 128 ms per callback
    const node = ctx.createScriptProcessor(2048, 1, 1);
    node.onaudioprocess = (ev) => {
      const data = ev.inputBuffer.getChannelData(0);
      if (received.samples < MAX_RECORD_S * RECORD_RATE) {
        received.chunks.push(new Float32Array(data));
        received.samples += data.length;
        received.clock.push([received.samples, Date.now()]); // one per block, so bounded like the recording
      }
      let sum = 0;
      for (let i = 0; i < data.length; i++) sum += data[i] * data[i];
      levelEl.value = Math.min(1, Math.sqrt(sum / data.length) * 4);
      ev.outputBuffer.getChannelData(0).fill(0); // the <audio> element plays it; this node only listens
    };
    source.connect(node);
    node.connect(ctx.destination);
    ctx.resume();
    received.ctx = ctx;
    received.node = node;
    received.startedAt = Date.now();
  }

  function stopRecording() {
    if (received.node) received.node.disconnect();
    if (received.ctx) received.ctx.close();
    received.node = null;
    received.ctx = null;
    levelEl.value = 0;
  }

  function wavBase64(chunks, samples, rate) {
    const buffer = new ArrayBuffer(44 + samples * 2);
    const view = new DataView(buffer);
    const text = (offset, s) => { for (let i = 0; i < s.length; i++) view.setUint8(offset + i, s.charCodeAt(i)); };
    text(0, "RIFF"); view.setUint32(4, 36 + samples * 2, true); text(8, "WAVE");
    text(12, "fmt "); view.setUint32(16, 16, true); view.setUint16(20, 1, true); view.setUint16(22, 1, true);
    view.setUint32(24, rate, true); view.setUint32(28, rate * 2, true); view.setUint16(32, 2, true);
    view.setUint16(34, 16, true); text(36, "data"); view.setUint32(40, samples * 2, true);
    let offset = 44;
    for (const chunk of chunks) {
      for (let i = 0; i < chunk.length; i++) {
        const s = Math.max(-1, Math.min(1, chunk[i]));
        view.setInt16(offset, s < 0 ? s * 0x8000 : s * 0x7fff, true);
        offset += 2;
      }
    }
    const bytes = new Uint8Array(buffer);
    let binary = "";
    for (let i = 0; i < bytes.length; i += 0x8000) {
      binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    }
    return btoa(binary);
  }

  window.receivedAudioWav = () => wavBase64(received.chunks, received.samples, RECORD_RATE);
  window.talkState = () => ({
    state,
    callId,
    sampleRate: RECORD_RATE,
    receivedSeconds: received.samples / RECORD_RATE,
    recordingStartedAt: received.startedAt, // ms since the epoch when the first received sample was recorded
    micStartedAt,
  });
  // [end sample, ms since the epoch] per recorded block: a block is recorded as soon as it is complete, so
  // sample s was received at about ms - (end - s) / sampleRate * 1000 (the least delayed blocks are the best clock)
  window.talkTimeline = () => ({ sampleRate: RECORD_RATE, micStartedAt, clock: received.clock.slice() });

  // ---- the call
  function iceGatheringComplete(conn) {
    return new Promise((resolve) => {
      if (conn.iceGatheringState === "complete") return resolve();
      const timer = setTimeout(resolve, ICE_GATHERING_TIMEOUT_MS);
      conn.addEventListener("icegatheringstatechange", () => {
        if (conn.iceGatheringState === "complete") {
          clearTimeout(timer);
          resolve();
        }
      });
    });
  }

  function release() {
    if (pc) pc.close();
    pc = null;
    if (mic) mic.getTracks().forEach((t) => t.stop());
    mic = null;
    stopRecording();
    startBtn.disabled = false;
    hangupBtn.disabled = true;
  }

  async function start() {
    errorEl.hidden = true;
    startBtn.disabled = true;
    callId = null;
    setState("connecting", "connecting…");
    try {
      const processing = !raw;
      mic = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: processing, noiseSuppression: processing, autoGainControl: processing },
      });
      micStartedAt = Date.now();
      pc = new RTCPeerConnection({ iceServers: [] });
      mic.getAudioTracks().forEach((track) => pc.addTrack(track, mic));
      pc.addEventListener("track", (ev) => {
        const stream = ev.streams[0] || new MediaStream([ev.track]);
        audioEl.srcObject = stream; // Chromium renders a remote stream into WebAudio only while an element plays it
        startRecording(stream);
      });
      pc.addEventListener("connectionstatechange", () => {
        if (!pc) return;
        if (pc.connectionState === "connected") setState("connected", "in call");
        if (["failed", "closed"].includes(pc.connectionState)) {
          release();
          setState("ended", "call ended");
        }
      });
      await pc.setLocalDescription(await pc.createOffer());
      await iceGatheringComplete(pc);
      const answer = await consoleApi("POST", `/v1/agents/${encodeURIComponent(agentId)}/web-calls`, {
        sdp: pc.localDescription.sdp,
        type: "offer",
      });
      callId = answer.call_id;
      callLink.textContent = callId;
      callLink.href = `/calls/${encodeURIComponent(callId)}`;
      callEl.hidden = false;
      await pc.setRemoteDescription({ type: "answer", sdp: answer.sdp });
      hangupBtn.disabled = false;
      if (state === "connecting") setState("connecting", "connecting media…");
    } catch (err) {
      showError(err);
      release();
      setState("failed", "failed");
    }
  }

  async function hangup() {
    hangupBtn.disabled = true;
    try {
      if (callId) await consoleApi("DELETE", `/v1/web-calls/${encodeURIComponent(callId)}`);
    } catch (err) {
      if (err.status !== 404) showError(err); // already over: nothing to hang up
    } finally {
      release();
      setState("ended", "call ended");
    }
  }

  startBtn.addEventListener("click", start);
  hangupBtn.addEventListener("click", hangup);
  window.addEventListener("pagehide", () => {
    if (callId && pc) {
      fetch(`/v1/web-calls/${encodeURIComponent(callId)}`, {
        method: "DELETE",
        headers: { "X-CSRF-Token": consoleCsrfToken() },
        credentials: "same-origin",
        keepalive: true,
      });
    }
  });
})();
