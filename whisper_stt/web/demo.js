// Whisper STT demo page: microphone -> AudioWorklet (16 kHz mono) -> PCM16/float32 frames over
// /ws/transcribe; partial and final text shown live; file upload over REST, the WebSocket, or as a durable
// job (POST /v1/jobs, then polling GET /v1/jobs/{id} for progress).
// Plain browser JavaScript, no build step, nothing loaded from other origins.
"use strict";

(function () {
  const $ = (id) => document.getElementById(id);
  const els = {
    conn: $("conn"), apiKey: $("apiKey"), rememberKey: $("rememberKey"), language: $("language"),
    audioFormat: $("audioFormat"), silence: $("silence"), processing: $("processing"),
    start: $("start"), stop: $("stop"), clear: $("clear"), level: $("level"), levelText: $("levelText"),
    finals: $("finals"), stable: $("stable"), unstable: $("unstable"), placeholder: $("placeholder"),
    file: $("file"), fileMethod: $("fileMethod"), sendFile: $("sendFile"), fileProgress: $("fileProgress"),
    fileStatus: $("fileStatus"), fileResult: $("fileResult"), error: $("error"), status: $("status"),
  };
  const KEY_STORE = "whisper-stt-demo.api-key";
  const SETTINGS_STORE = "whisper-stt-demo.settings";
  const CLOSE_REASONS = {
    1001: "the server is shutting down", 1006: "the connection was lost", 1011: "server error",
    1013: "the server is full, try again later", 4001: "invalid API key", 4002: "authentication timed out",
    4003: "malformed authentication message",
  };

  // Same origin, ws: or wss: to match the page (browsers give the microphone only to https or localhost).
  function endpoint(path, socket) {
    const url = new URL(path, window.location.href);
    if (socket) url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    return url.toString();
  }

  // ---------------------------------------------------------------------------------------------
  // UI helpers
  function setConn(text, kind) {
    els.conn.textContent = text;
    els.conn.className = "pill pill-" + (kind || "idle");
  }
  function setStatus(text) { els.status.textContent = text; }
  function showError(text) {
    els.error.textContent = text;
    els.error.hidden = !text;
  }
  function fmtTime(s) {
    s = Math.max(0, Number(s) || 0);
    const m = Math.floor(s / 60);
    return String(m).padStart(2, "0") + ":" + (s - m * 60).toFixed(1).padStart(4, "0");
  }
  function setLevel(rms, peak) {
    // dBFS mapped to 0..100 %: -60 dB is empty, 0 dB full.
    const db = 20 * Math.log10(Math.max(rms, 1e-6));
    const pct = Math.max(0, Math.min(100, ((db + 60) / 60) * 100));
    els.level.style.width = pct.toFixed(0) + "%";
    els.levelText.textContent = rms > 0 ? db.toFixed(0) + " dB" + (peak >= 0.99 ? " (clipping)" : "") : "";
  }

  function loadSettings() {
    try {
      const key = localStorage.getItem(KEY_STORE);
      if (key) els.apiKey.value = key;
      const s = JSON.parse(localStorage.getItem(SETTINGS_STORE) || "{}");
      if (typeof s.language === "string") els.language.value = s.language;
      if (s.audioFormat) els.audioFormat.value = s.audioFormat;
      if (s.silence) els.silence.value = s.silence;
      if (typeof s.processing === "boolean") els.processing.checked = s.processing;
      if (typeof s.rememberKey === "boolean") els.rememberKey.checked = s.rememberKey;
    } catch (e) { /* storage disabled: defaults */ }
  }
  function saveSettings() {
    try {
      const key = els.apiKey.value.trim();
      if (els.rememberKey.checked && key) localStorage.setItem(KEY_STORE, key);
      else localStorage.removeItem(KEY_STORE);
      localStorage.setItem(SETTINGS_STORE, JSON.stringify({
        language: els.language.value, audioFormat: els.audioFormat.value, silence: els.silence.value,
        processing: els.processing.checked, rememberKey: els.rememberKey.checked,
      }));
    } catch (e) { /* storage disabled */ }
  }

  // ---------------------------------------------------------------------------------------------
  // server info and the authenticated socket
  let serverInfo = null; // GET / : {auth_enabled, model, ...}
  async function fetchServerInfo() {
    try {
      const r = await fetch(endpoint("./", false), { cache: "no-store" });
      if (r.ok) serverInfo = await r.json();
    } catch (e) { serverInfo = null; }
    return serverInfo;
  }

  function apiKeyFor(required) {
    const key = els.apiKey.value.trim();
    if (required && !key) throw new Error("This server requires an API key: paste it into the API key field.");
    return key;
  }

  // The last messages from the server, for debugging (whisperDemo.messages()).
  const received = [];
  function remember(msg) {
    received.push(msg);
    if (received.length > 200) received.shift();
  }

  // Open /ws/transcribe, authenticate (key as the first message) and wait for "connected".
  // handlers.onMessage gets every later message; handlers.live: this socket drives the connection
  // badge and status line (file uploads report in their own area). Resolves to {ws, connected}.
  function openSocket(handlers) {
    return new Promise((resolve, reject) => {
      const needKey = !serverInfo || serverInfo.auth_enabled !== false;
      let key;
      try { key = apiKeyFor(serverInfo && serverInfo.auth_enabled === true); } catch (e) { reject(e); return; }
      const ws = new WebSocket(endpoint("ws/transcribe", true));
      ws.binaryType = "arraybuffer";
      let ready = false;
      let lastError = "";
      const timer = setTimeout(() => {
        if (!ready) { reject(new Error("The server did not answer within 15 s.")); try { ws.close(); } catch (e) {} }
      }, 15000);
      ws.onopen = () => {
        if (handlers.live) setConn("authenticating", "busy");
        if (needKey && key) ws.send(JSON.stringify({ api_key: key }));
      };
      ws.onmessage = (event) => {
        if (typeof event.data !== "string") return;
        let msg;
        try { msg = JSON.parse(event.data); } catch (e) { return; }
        remember(msg);
        if (!ready) {
          if (msg.type === "auth") { if (handlers.live) setStatus(msg.message || "Authenticated."); return; }
          if (msg.type === "connected") {
            ready = true;
            clearTimeout(timer);
            resolve({ ws, connected: msg });
            return;
          }
          if (msg.type === "error") { lastError = msg.message || msg.code || "error"; return; }
        }
        handlers.onMessage(msg);
      };
      ws.onerror = () => { lastError = lastError || "WebSocket error"; };
      ws.onclose = (event) => {
        clearTimeout(timer);
        const why = lastError || event.reason || CLOSE_REASONS[event.code] || ("closed (" + event.code + ")");
        if (!ready) {
          reject(new Error("Could not connect to " + endpoint("ws/transcribe", true) + ": " + why));
        } else if (handlers.onClose) {
          handlers.onClose(event, lastError || event.reason || CLOSE_REASONS[event.code] || "");
        }
      };
    });
  }

  // ---------------------------------------------------------------------------------------------
  // live transcription
  const live = {
    ws: null, audioCtx: null, stream: null, node: null, source: null, started: false,
    pending: [], stopping: false, stopTimer: null, utterance: null,
  };

  function renderPartial(msg) {
    live.utterance = msg.utterance_id;
    const hasSplit = typeof msg.stable_text === "string" && typeof msg.unstable_text === "string";
    const stable = hasSplit ? msg.stable_text : "";
    const unstable = hasSplit ? msg.unstable_text : msg.text || "";
    els.stable.textContent = stable;
    els.unstable.textContent = (stable && unstable ? " " : "") + unstable;
    els.placeholder.hidden = true;
  }

  function addFinal(msg) {
    const text = (msg.text || "").trim();
    els.stable.textContent = "";
    els.unstable.textContent = "";
    if (!text) return;
    const p = document.createElement("p");
    p.className = "final";
    const t = document.createElement("span");
    t.className = "t";
    t.textContent = "start" in msg ? fmtTime(msg.start) + "-" + fmtTime(msg.end) : "";
    const body = document.createElement("span");
    body.className = "text";
    body.textContent = text;
    p.append(t, body);
    if (msg.language) p.title = "language: " + msg.language;
    els.finals.appendChild(p);
    els.placeholder.hidden = true;
    els.finals.parentElement.scrollTop = els.finals.parentElement.scrollHeight;
  }

  function onLiveMessage(msg) {
    switch (msg.type) {
      case "partial": renderPartial(msg); break;
      case "final": addFinal(msg); break;
      case "status":
        setStatus(msg.message || "");
        if (msg.state === "started") {
          live.started = true;
          setConn("streaming", "ok");
          for (const chunk of live.pending) sendAudio(chunk);
          live.pending = [];
        } else if (msg.state === "stopped" && live.stopping) {
          finishStop();
        }
        break;
      case "error":
        showError("Server: " + (msg.message || msg.code) + (msg.code ? " [" + msg.code + "]" : ""));
        break;
      default: break;
    }
  }

  function encode(samples) {
    if (els.audioFormat.value === "float32") return samples.buffer.slice(samples.byteOffset,
      samples.byteOffset + samples.byteLength);
    const out = new Int16Array(samples.length);
    for (let i = 0; i < samples.length; i++) {
      const s = Math.max(-1, Math.min(1, samples[i]));
      out[i] = s < 0 ? s * 32768 : s * 32767;
    }
    return out.buffer;
  }

  function sendAudio(samples) {
    const ws = live.ws;
    if (!ws || ws.readyState !== WebSocket.OPEN) return;
    if (ws.bufferedAmount > 4 * 1024 * 1024) { setStatus("Network too slow: dropping audio."); return; }
    ws.send(encode(samples));
  }

  async function startMic() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new Error("This browser gives no microphone access here. Open the page over https:// " +
        "(or on localhost): browsers only allow the microphone on secure pages.");
    }
    const processing = els.processing.checked;
    live.stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: processing, noiseSuppression: processing, autoGainControl: processing },
      video: false,
    });
    const Ctx = window.AudioContext || window.webkitAudioContext;
    live.audioCtx = new Ctx();
    if (!live.audioCtx.audioWorklet) throw new Error("This browser has no AudioWorklet support.");
    await live.audioCtx.audioWorklet.addModule(endpoint("demo/audio-worklet.js", false));
    live.source = live.audioCtx.createMediaStreamSource(live.stream);
    live.node = new AudioWorkletNode(live.audioCtx, "resampler-16k", {
      numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1], processorOptions: { chunkMs: 100 },
    });
    live.node.port.onmessage = (event) => {
      const { samples, rms, peak } = event.data;
      setLevel(rms, peak);
      if (live.stopping) return;
      if (live.started) sendAudio(samples);
      else if (live.pending.length < 50) live.pending.push(samples);
    };
    live.source.connect(live.node);
    live.node.connect(live.audioCtx.destination); // outputs silence; keeps the graph pulling audio
    if (live.audioCtx.state === "suspended") await live.audioCtx.resume();
    const track = live.stream.getAudioTracks()[0];
    setStatus("Microphone: " + (track ? track.label || "default" : "?") + " at " + live.audioCtx.sampleRate +
      " Hz, sent as 16 kHz " + els.audioFormat.value + ".");
  }

  function stopMic() {
    try { if (live.node) { live.node.port.postMessage({ command: "stop" }); live.node.disconnect(); } } catch (e) {}
    try { if (live.source) live.source.disconnect(); } catch (e) {}
    if (live.stream) live.stream.getTracks().forEach((t) => t.stop());
    if (live.audioCtx) live.audioCtx.close().catch(() => {});
    live.node = live.source = live.stream = live.audioCtx = null;
    els.level.style.width = "0";
    els.levelText.textContent = "mic off";
  }

  function resetButtons() {
    els.start.disabled = false;
    els.stop.disabled = true;
  }

  async function start() {
    showError("");
    saveSettings();
    els.start.disabled = true;
    live.started = false;
    live.stopping = false;
    live.pending = [];
    try {
      setConn("connecting", "busy");
      await fetchServerInfo();
      await startMic();
      const { ws, connected } = await openSocket({
        live: true,
        onMessage: onLiveMessage,
        onClose: (event, why) => {
          const wasStopping = live.stopping;
          live.ws = null;
          stopMic();
          resetButtons();
          setConn("disconnected", wasStopping || event.code === 1000 ? "idle" : "bad");
          if (!wasStopping && event.code !== 1000) showError("Connection closed: " + (why || event.code));
        },
      });
      live.ws = ws;
      setConn("connected", "ok");
      setStatus("Connected: model " + connected.model + " on " + connected.device + ", load " + connected.server_load);
      const silence = parseFloat(els.silence.value);
      ws.send(JSON.stringify({
        command: "start",
        language: els.language.value,
        audio_format: els.audioFormat.value,
        silence_threshold: Number.isFinite(silence) ? silence : 2.0,
      }));
      els.stop.disabled = false;
    } catch (err) {
      stopMic();
      if (live.ws) { try { live.ws.close(); } catch (e) {} live.ws = null; }
      resetButtons();
      setConn("disconnected", "bad");
      showError(err && err.message ? err.message : String(err));
    }
  }

  function stop() {
    els.stop.disabled = true;
    if (!live.ws) { stopMic(); resetButtons(); return; }
    if (live.node) live.node.port.postMessage({ command: "flush" });
    live.stopping = true;
    setConn("finishing", "busy");
    setStatus("Stopping: waiting for the last final...");
    // Let the flushed last chunk arrive, then ask the server for the last final.
    setTimeout(() => {
      stopMic();
      if (live.ws && live.ws.readyState === WebSocket.OPEN) live.ws.send(JSON.stringify({ command: "stop" }));
    }, 150);
    live.stopTimer = setTimeout(finishStop, 30000);
  }

  function finishStop() {
    clearTimeout(live.stopTimer);
    const ws = live.ws;
    live.ws = null;
    if (ws) { try { ws.close(1000, "done"); } catch (e) {} }
    stopMic();
    resetButtons();
    setConn("disconnected", "idle");
    setStatus("Stopped.");
  }

  // ---------------------------------------------------------------------------------------------
  // file transcription
  function showFileResult(result, how) {
    els.fileResult.textContent = "";
    const head = document.createElement("div");
    head.className = "muted";
    const prob = typeof result.language_probability === "number" ? " (" + result.language_probability.toFixed(2) + ")" : "";
    head.textContent = how + ": language " + (result.language || "?") + prob + ", " +
      (Number(result.duration) || 0).toFixed(1) + " s of audio" +
      (typeof result.processing_time === "number" ? ", processed in " + result.processing_time.toFixed(2) + " s" : "");
    const text = document.createElement("p");
    text.id = "fileText";
    text.textContent = (result.text || "").trim() || "(no speech found)";
    els.fileResult.append(head, text);
    const segments = result.segments || [];
    if (segments.length) {
      const table = document.createElement("table");
      for (const seg of segments) {
        const tr = table.insertRow();
        const t = tr.insertCell();
        t.className = "t";
        t.textContent = fmtTime(seg.start) + " - " + fmtTime(seg.end);
        tr.insertCell().textContent = (seg.text || "").trim();
      }
      els.fileResult.append(table);
    }
  }

  // The server's message from an error answer: /v1 answers {"error": {"message"}}, /transcribe {"detail"}.
  function serverMessage(status, body, fallback) {
    const err = body && body.error;
    const text = (err && (err.message || err)) || (body && (body.detail || body.message)) || fallback;
    return "Server error " + status + ": " + (typeof text === "string" ? text : JSON.stringify(text));
  }

  // POST the file as a form, showing the upload's progress; resolves with the JSON body when the answer
  // has status ``expected`` (and ``accept(body)``). REST and job uploads both go through here.
  function postFile(path, file, key, extra, expected, accept, onUploaded) {
    return new Promise((resolve, reject) => {
      const form = new FormData();
      form.append("file", file, file.name);
      if (els.language.value) form.append("language", els.language.value);
      for (const [name, value] of Object.entries(extra)) form.append(name, value);
      const xhr = new XMLHttpRequest();
      xhr.open("POST", endpoint(path, false));
      if (key) xhr.setRequestHeader("X-API-Key", key);
      xhr.responseType = "text";
      xhr.upload.onprogress = (e) => {
        if (e.lengthComputable) {
          els.fileProgress.value = e.loaded / e.total;
          els.fileStatus.textContent = "Uploading " + Math.round((100 * e.loaded) / e.total) + " %";
        }
      };
      if (onUploaded) xhr.upload.onload = onUploaded;
      xhr.onload = () => {
        let body = null;
        try { body = JSON.parse(xhr.responseText); } catch (e) { /* not JSON */ }
        if (xhr.status === expected && body && accept(body)) resolve(body);
        else reject(new Error(serverMessage(xhr.status, body, xhr.statusText)));
      };
      xhr.onerror = () => reject(new Error("Upload failed: cannot reach the server."));
      xhr.send(form);
    });
  }

  function uploadRest(file, key) {
    return postFile("transcribe", file, key, {}, 200, () => true,
                    () => { els.fileStatus.textContent = "Uploaded; transcribing..."; });
  }

  async function uploadWs(file) {
    const data = await file.arrayBuffer();
    return new Promise((resolve, reject) => {
      let socket = null;
      let settled = false;
      const done = (fn, value) => {
        if (settled) return;
        settled = true;
        if (socket) { try { socket.close(1000, "done"); } catch (e) {} }
        fn(value);
      };
      openSocket({
        onMessage: (msg) => {
          if (msg.type === "file_result") done(resolve, msg);
          else if (msg.type === "error") done(reject, new Error("Server: " + (msg.message || msg.code)));
          else if (msg.type === "status") els.fileStatus.textContent = msg.message || "";
        },
        onClose: (event, why) => done(reject, new Error("Connection closed: " + (why || event.code))),
      }).then(({ ws }) => {
        socket = ws;
        ws.send(JSON.stringify({ command: "transcribe_file", language: els.language.value }));
        const frame = 256 * 1024;
        for (let pos = 0; pos < data.byteLength; pos += frame) ws.send(data.slice(pos, pos + frame));
        ws.send(JSON.stringify({ command: "transcribe_file_end" }));
        els.fileProgress.value = 1;
      }, (err) => done(reject, err));
    });
  }

  // Durable job: upload (progress of the upload), then poll the job (progress of the transcription).
  const jobStates = []; // {status, progress} as the page saw them, for whisperDemo.jobStates()
  function submitJob(file, key) {
    // verbose_json: segments with times, like the other methods show
    return postFile("v1/jobs", file, key, { response_format: "verbose_json" }, 202, (body) => body.id, null);
  }

  function showJob(job) {
    const progress = Math.max(0, Math.min(1, Number(job.progress) || 0));
    jobStates.push({ status: job.status, progress });
    els.fileProgress.value = progress;
    const audio = typeof job.duration === "number" ? " of " + fmtTime(job.duration) : "";
    els.fileStatus.textContent = "Job " + job.id + ": " + job.status + " " + Math.round(progress * 100) + " %" + audio;
  }

  async function runJob(file, key) {
    jobStates.length = 0;
    let job = await submitJob(file, key);
    showJob(job);
    const headers = key ? { "X-API-Key": key } : {};
    let failures = 0;
    while (!["succeeded", "failed", "cancelled"].includes(job.status)) {
      await new Promise((r) => setTimeout(r, 500));
      let r;
      try {
        r = await fetch(endpoint("v1/jobs/" + encodeURIComponent(job.id), false), { headers, cache: "no-store" });
      } catch (e) {
        // the job is durable: a restarting server is asked again for a while
        if (++failures > 60) throw new Error("Lost the server while job " + job.id + " ran; it keeps running there.");
        continue;
      }
      failures = 0;
      let body = null;
      try { body = await r.json(); } catch (e) { /* not JSON */ }
      if (!r.ok || !body) throw new Error(serverMessage(r.status, body, r.statusText));
      job = body;
      showJob(job);
    }
    if (job.status !== "succeeded") throw new Error("Job " + job.id + " " + job.status + (job.error ? ": " + job.error : "."));
    return Object.assign({}, job.result, { language: job.language || (job.result || {}).language });
  }

  async function sendFile() {
    const file = els.file.files && els.file.files[0];
    showError("");
    if (!file) { showError("Choose an audio file first."); return; }
    saveSettings();
    els.sendFile.disabled = true;
    els.fileProgress.hidden = false;
    els.fileProgress.value = 0;
    els.fileResult.textContent = "";
    const began = performance.now();
    try {
      await fetchServerInfo();
      const key = apiKeyFor(serverInfo && serverInfo.auth_enabled === true);
      const how = { ws: "WebSocket", job: "Job" }[els.fileMethod.value] || "REST";
      els.fileStatus.textContent = "Sending " + file.name + " (" + (file.size / 1024).toFixed(0) + " KB) via " + how + "...";
      const result = how === "WebSocket" ? await uploadWs(file)
        : how === "Job" ? await runJob(file, key) : await uploadRest(file, key);
      showFileResult(result, how);
      const prefix = how === "Job" ? els.fileStatus.textContent + ". " : "";
      els.fileStatus.textContent = prefix + "Done in " + ((performance.now() - began) / 1000).toFixed(1) + " s.";
    } catch (err) {
      els.fileStatus.textContent = "";
      showError(err && err.message ? err.message : String(err));
    } finally {
      els.sendFile.disabled = false;
      els.fileProgress.hidden = true;
    }
  }

  // ---------------------------------------------------------------------------------------------
  els.start.addEventListener("click", start);
  els.stop.addEventListener("click", stop);
  els.clear.addEventListener("click", () => {
    els.finals.textContent = "";
    els.stable.textContent = "";
    els.unstable.textContent = "";
    els.placeholder.hidden = false;
    if (live.ws && live.ws.readyState === WebSocket.OPEN) live.ws.send(JSON.stringify({ command: "clear" }));
  });
  els.sendFile.addEventListener("click", sendFile);
  for (const el of [els.language, els.audioFormat, els.silence, els.processing, els.rememberKey]) {
    el.addEventListener("change", saveSettings);
  }
  els.apiKey.addEventListener("change", saveSettings);
  loadSettings();
  if (!window.isSecureContext) {
    showError("This page is not on https:// or localhost, so the browser will not give it the microphone. " +
      "Use the server's wss/https port (--mode wss or both) for remote access.");
  }
  fetchServerInfo().then((info) => {
    if (info) {
      setStatus("Server: model " + info.model + " on " + info.device + (info.auth_enabled ? ", API key required" :
        ", no API key needed") + ".");
      if (info.auth_enabled === false) els.apiKey.placeholder = "not needed: this server runs without API keys";
    } else {
      setStatus("Could not read the server status.");
    }
  });
  // For automation and debugging: the state the page shows.
  window.whisperDemo = {
    finalText: () => Array.from(els.finals.querySelectorAll(".final .text")).map((e) => e.textContent).join(" "),
    partialText: () => (els.stable.textContent + els.unstable.textContent).trim(),
    error: () => (els.error.hidden ? "" : els.error.textContent),
    connection: () => els.conn.textContent,
    messages: () => received.slice(),
    jobStates: () => jobStates.slice(),
  };
})();
