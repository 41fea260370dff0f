"""The page at `/`: try the service from a browser, and the report a page sends about what it drew.

One self-contained HTML page (no external resources): pick an avatar (GET /v1/avatars) or upload a portrait (POST),
choose the microphone (captured by an AudioWorklet, resampled to 16 kHz, sent as 16-bit PCM every 40 ms) or an
audio file (decoded and resampled by an OfflineAudioContext at 16 kHz, sent in real time), and watch the avatar
over WebRTC (recvonly video and audio, the offer sent once ICE gathering is complete). The stats messages show the
live latency; buttons interrupt and end the speech. A token field is sent as `Authorization: Bearer` on /v1 and
as `?token=` on the WebSocket.

Query parameters start it without clicks (for kiosks and tests): `avatar=ID`, `source=mic|none`, `token=T`,
`autostart=1`, and `report=N`: after N video frames drawn into the page's canvas it sends
`{"type": "client_report", "frames_drawn", "width", "height", "grid", "pixels"}` over the WebSocket, `pixels` the
mean RGB of each cell of a `grid` x `grid` split of the canvas, row by row. The server keeps the last few reports
on its state (`record_client_report`).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from .protocol import ProtocolError

CLIENT_REPORTS_KEPT = 16

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>vasa-engine</title>
<style>
  body { background: #111; color: #ddd; font: 14px system-ui, sans-serif; margin: 1.5em; }
  fieldset { border: 1px solid #333; margin: 0 0 0.8em; padding: 0.6em 0.8em; }
  label { margin-right: 1em; }
  button { margin-right: 0.5em; }
  video { width: 512px; height: 512px; background: #000; display: block; }
  canvas { display: none; }
  #stats, #status { margin-top: 0.5em; font-variant-numeric: tabular-nums; }
  .note { color: #999; }
</style>
</head>
<body>
<fieldset>
  <label>Token <input id="token" type="password" size="20" autocomplete="off"></label>
  <label>Avatar <select id="avatar"></select></label>
  <label>Upload a portrait <input id="portrait" type="file" accept="image/png,image/jpeg,image/webp"></label>
</fieldset>
<fieldset>
  <label><input type="radio" name="source" value="mic" checked> Microphone</label>
  <label><input type="radio" name="source" value="file"> Audio file <input id="audiofile" type="file"
    accept="audio/*"></label>
  <label><input type="radio" name="source" value="none"> None (idle)</label>
</fieldset>
<button id="start">Start</button><button id="interrupt" disabled>Interrupt</button><button id="end"
  disabled>End</button>
<div id="status">idle</div>
<video id="view" autoplay playsinline></video>
<canvas id="probe"></canvas>
<div id="stats"></div>
<div class="note">AI-generated video (vasa-engine).</div>
<script>
"use strict";
const RATE = 16000, CHUNK = 640;  // 16 kHz, 40 ms per message
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const say = (text) => { $("status").textContent = text; };
let ws = null, pc = null, capture = null;

$("token").value = params.get("token") || "";
const headers = () => $("token").value ? { Authorization: `Bearer ${$("token").value}` } : {};

async function loadAvatars(selected) {
  const response = await fetch("/v1/avatars", { headers: headers() });
  if (!response.ok) { say(`avatars: ${(await response.json()).error || response.status}`); return; }
  const select = $("avatar");
  select.replaceChildren();
  for (const a of (await response.json()).avatars) {
    const option = new Option(`${a.id} (${a.width}x${a.height})`, a.id);
    select.add(option);
  }
  if (selected) select.value = selected;
}

$("portrait").onchange = async () => {
  const file = $("portrait").files[0];
  if (!file) return;
  say("preparing the portrait...");
  const response = await fetch("/v1/avatars", { method: "POST", body: file,
    headers: { ...headers(), "Content-Type": file.type } });
  const body = await response.json();
  if (!response.ok) { say(`upload: ${body.error}`); return; }
  await loadAvatars(body.id);
  say(`avatar ${body.id} ready`);
};
$("token").onchange = () => loadAvatars();

// ---------------------------------------------------------------------------------------- audio out to the server
function sendPcm(samples) {  // Float32Array at 16 kHz
  if (!ws || ws.readyState !== WebSocket.OPEN) return;
  const pcm = new Int16Array(samples.length);
  for (let i = 0; i < samples.length; i++) {
    pcm[i] = Math.max(-32768, Math.min(32767, Math.round(samples[i] * 32768)));
  }
  ws.send(pcm.buffer);
}

class Resampler {  // linear interpolation from `from` Hz to 16 kHz, carried across blocks
  constructor(from) { this.step = from / RATE; this.pos = 0; this.last = 0; this.out = []; }
  push(block) {
    let pos = this.pos;
    while (pos < block.length) {
      const i = Math.floor(pos), t = pos - i;
      const a = i === 0 ? this.last : block[i - 1], b = block[i];
      this.out.push(a + (b - a) * t);
      pos += this.step;
    }
    this.pos = pos - block.length;
    this.last = block[block.length - 1];
    while (this.out.length >= CHUNK) sendPcm(Float32Array.from(this.out.splice(0, CHUNK)));
  }
}

const WORKLET = `class Tap extends AudioWorkletProcessor {
  process(inputs) { if (inputs[0][0]) this.port.postMessage(inputs[0][0].slice()); return true; }
}
registerProcessor("tap", Tap);`;

async function startMic() {
  const stream = await navigator.mediaDevices.getUserMedia({ audio: { channelCount: 1, echoCancellation: true,
    noiseSuppression: true } });
  const context = new AudioContext();
  if (context.state === "suspended") await context.resume();
  await context.audioWorklet.addModule(URL.createObjectURL(new Blob([WORKLET], { type: "text/javascript" })));
  const tap = new AudioWorkletNode(context, "tap");
  const resampler = new Resampler(context.sampleRate);
  tap.port.onmessage = (event) => resampler.push(event.data);
  context.createMediaStreamSource(stream).connect(tap);
  capture = { stop() { stream.getTracks().forEach((t) => t.stop()); context.close(); } };
}

async function startFile() {
  const file = $("audiofile").files[0];
  if (!file) throw new Error("choose an audio file first");
  const decoded = await new OfflineAudioContext(1, 1, RATE).decodeAudioData(await file.arrayBuffer());
  const mono = new Float32Array(decoded.length);
  for (let c = 0; c < decoded.numberOfChannels; c++) {
    const channel = decoded.getChannelData(c);
    for (let i = 0; i < mono.length; i++) mono[i] += channel[i] / decoded.numberOfChannels;
  }
  const started = performance.now();
  let sent = 0;
  const timer = setInterval(() => {  // real time: what is due by the clock, in 40 ms messages
    const due = Math.min(mono.length, Math.floor((performance.now() - started) * RATE / 1000));
    while (sent + CHUNK <= due || (due === mono.length && sent < due)) {
      sendPcm(mono.subarray(sent, Math.min(sent + CHUNK, due)));
      sent = Math.min(sent + CHUNK, due);
    }
    if (sent >= mono.length) { clearInterval(timer); say("audio file sent"); }
  }, 40);
  capture = { stop() { clearInterval(timer); } };
}

// ---------------------------------------------------------------------------------------- video in over WebRTC
async function offer() {
  pc = new RTCPeerConnection();
  pc.addTransceiver("video", { direction: "recvonly" });
  pc.addTransceiver("audio", { direction: "recvonly" });
  pc.ontrack = (event) => {
    const video = $("view");
    if (!video.srcObject) video.srcObject = event.streams[0] || new MediaStream();
    if (!event.streams[0]) video.srcObject.addTrack(event.track);
    video.play().catch(() => { video.muted = true; video.play(); say("muted: click the video to hear it"); });
  };
  pc.onconnectionstatechange = () => say(`WebRTC ${pc.connectionState}`);
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve) => {  // non-trickle: every candidate goes in the offer
    if (pc.iceGatheringState === "complete") return resolve();
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") resolve();
    });
    setTimeout(resolve, 5000);
  });
  ws.send(JSON.stringify({ type: "offer", sdp: pc.localDescription.sdp }));
}

function watchFrames(wanted) {  // draw presented frames into the canvas; report after `wanted` of them
  const video = $("view"), canvas = $("probe");
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  let drawn = 0;
  const next = (f) => video.requestVideoFrameCallback ? video.requestVideoFrameCallback(f)
    : requestAnimationFrame(f);
  const draw = () => {
    if (video.videoWidth > 0 && video.readyState >= 2) {
      canvas.width = video.videoWidth;
      canvas.height = video.videoHeight;
      ctx.drawImage(video, 0, 0);
      drawn += 1;
      if (drawn === wanted) report(ctx, canvas.width, canvas.height, drawn);
    }
    if (drawn < wanted) next(draw);
  };
  next(draw);
}

function report(ctx, width, height, drawn) {
  const grid = 4, data = ctx.getImageData(0, 0, width, height).data, pixels = [];
  for (let gy = 0; gy < grid; gy++) {
    for (let gx = 0; gx < grid; gx++) {
      const sum = [0, 0, 0];
      let n = 0;
      for (let y = Math.floor(gy * height / grid); y < Math.floor((gy + 1) * height / grid); y++) {
        for (let x = Math.floor(gx * width / grid); x < Math.floor((gx + 1) * width / grid); x++) {
          const i = 4 * (y * width + x);
          sum[0] += data[i]; sum[1] += data[i + 1]; sum[2] += data[i + 2]; n++;
        }
      }
      pixels.push(sum.map((s) => Math.round(s / Math.max(n, 1))));
    }
  }
  if (ws && ws.readyState === WebSocket.OPEN) {
    ws.send(JSON.stringify({ type: "client_report", frames_drawn: drawn, width, height, grid, pixels }));
  }
}

// ---------------------------------------------------------------------------------------- the session
function showStats(message) {
  const l = message.latency_ms || {}, ms = (v) => (v === null || v === undefined ? "-" : `${v.toFixed(0)} ms`);
  $("stats").textContent = `latency p50 ${ms(l.p50)}, p95 ${ms(l.p95)}, max ${ms(l.max)}; `
    + `${message.frames} frames, ${message.late} late`;
}

function stop() {
  if (capture) { capture.stop(); capture = null; }
  if (pc) { pc.close(); pc = null; }
  $("start").disabled = false;
  $("interrupt").disabled = $("end").disabled = true;
}

function start() {
  const avatar = $("avatar").value;
  if (!avatar) { say("pick or upload an avatar first"); return; }
  const source = params.get("source") || document.querySelector("input[name=source]:checked").value;
  const token = $("token").value ? `?token=${encodeURIComponent($("token").value)}` : "";
  ws = new WebSocket(`${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/v1/sessions${token}`);
  $("start").disabled = true;
  ws.onopen = () => ws.send(JSON.stringify({ type: "start", avatar, output: "webrtc" }));
  ws.onclose = (event) => { say(`closed (${event.code}${event.reason ? ": " + event.reason : ""})`); stop(); };
  ws.onmessage = async (event) => {
    const message = JSON.parse(event.data);
    if (message.type === "ready") {
      say(`session ${message.session} on ${message.replica}: ${message.width}x${message.height}`);
      $("interrupt").disabled = $("end").disabled = false;
      await offer();
      const wanted = parseInt(params.get("report") || "0", 10);
      if (wanted > 0) watchFrames(wanted);
      try {
        if (source === "mic") await startMic();
        else if (source === "file") await startFile();
      } catch (e) { say(`audio: ${e.message}`); }
    } else if (message.type === "answer") {
      await pc.setRemoteDescription({ type: "answer", sdp: message.sdp });
    } else if (message.type === "stats") {
      showStats(message);
    } else if (message.type === "done") {
      showStats(message.report);
      say("done");
    } else if (message.type === "error") {
      say(`error: ${message.message}`);
    }
  };
}

$("start").onclick = start;
$("interrupt").onclick = () => ws && ws.send(JSON.stringify({ type: "interrupt" }));
$("end").onclick = () => { if (capture) { capture.stop(); capture = null; } ws.send(JSON.stringify({ type: "end" })); };
loadAvatars(params.get("avatar")).then(() => { if (params.get("autostart") === "1") start(); });
</script>
</body>
</html>
"""


def record_client_report(state: Any, body: dict[str, Any]) -> None:
    """Keep a page's `client_report` on the service state (`state.client_reports`, the newest
    `CLIENT_REPORTS_KEPT`); ProtocolError if it is not the page's report."""
    if not isinstance(body.get("frames_drawn"), int) or not isinstance(body.get("pixels"), list):
        raise ProtocolError("client_report needs \"frames_drawn\" (an integer) and \"pixels\" (a list)")
    reports = getattr(state, "client_reports", None)
    if reports is None:
        reports = state.client_reports = deque(maxlen=CLIENT_REPORTS_KEPT)
    reports.append(body)
