#!/usr/bin/env python3
"""Replay speech over /ws/transcribe at real-time pace and measure streaming quality and latency.

For every input it prints: the error rate of the streamed finals and of the same audio transcribed whole
by the same server (POST /transcribe, same model, same run), first-partial latency (start of speech ->
first partial of that utterance), final latency p50/p95 (end of speech -> final), partials per second of
speech, and how often partial words later changed (vs the next partial, and stable words vs the final).
Speech start/end times come from Silero VAD run on the input here.

The same run then replays the LibriVox item over the three wire protocols of the one streaming core
(``/ws/transcribe``, OpenAI Realtime ``/v1/realtime`` at 24 kHz, Deepgram ``/v1/listen``), with 1 stream
and with ``--streams`` concurrent ones (the capacity figure), and prints per protocol: error rate, first
delta latency (speech start -> first partial / delta / interim result of that utterance) and final
latency (end of speech -> final / completed / is_final result).

Usage:
    python bench/bench_streaming.py                 # built-in set: LibriVox clips + espeak-ng en/es/fr
    python bench/bench_streaming.py --protocols openai,deepgram --streams 1,16 --skip-items
    python bench/bench_streaming.py a.wav b.wav     # reference text from a.txt / b.txt next to the file
    python bench/bench_streaming.py --url ws://host:8765/ws/transcribe --api-key sk-...
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import websockets

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.speech import (  # noqa: E402
    ESPEAK_SENTENCES, error_rate, espeak, have_espeak, librivox_clips, normalize, wav_bytes,
)
from whisper_stt.audio import SAMPLE_RATE, decode_file, float32_to_pcm16  # noqa: E402


@dataclass
class Item:
    name: str
    audio: np.ndarray
    reference: str
    language: str


@dataclass
class Result:
    item: Item
    finals: list = field(default_factory=list)  # (recv time, msg)
    partials: list = field(default_factory=list)
    send_times: list = field(default_factory=list)  # (audio seconds sent so far, wall time)
    whole_text: str = ""


def builtin_items(tmp: Path) -> list[Item]:
    items = []
    clips = librivox_clips()
    if clips:
        gap = np.zeros(int(2.5 * SAMPLE_RATE), dtype=np.float32)
        parts = []
        for c in clips:
            parts += [decode_file(str(c.path)), gap]
        items.append(Item("librivox_5clips", np.concatenate([gap[:8000]] + parts), " ".join(c.text for c in clips), "en"))
    if have_espeak():
        gap = np.zeros(int(2.5 * SAMPLE_RATE), dtype=np.float32)
        for lang in ("en", "es", "fr"):
            path = espeak(ESPEAK_SENTENCES[lang], lang, tmp / f"espeak_{lang}.wav")
            audio = np.concatenate([gap[:8000], decode_file(str(path)), gap, decode_file(str(path))])
            items.append(Item(f"espeak_{lang}_x2", audio, ESPEAK_SENTENCES[lang] + " " + ESPEAK_SENTENCES[lang], lang))
    return items


def file_items(paths: list[str]) -> list[Item]:
    items = []
    for p in map(Path, paths):
        ref = p.with_suffix(".txt")
        items.append(Item(p.stem, decode_file(str(p)), ref.read_text().strip() if ref.exists() else "", "en"))
    return items


async def replay_openai(url: str, api_key: str | None, item: Item, args) -> Result:
    """OpenAI Realtime transcription session (GA shape), 24 kHz pcm16, server VAD; messages are converted
    to the /ws/transcribe shape (text, start, end, reason, utterance_id) for the analysis."""
    import base64

    from whisper_stt.streaming.codecs import resample

    res = Result(item)
    tail = np.zeros(int((args.silence_threshold + 1.0) * SAMPLE_RATE), dtype=np.float32)
    audio16 = np.concatenate([item.audio, tail])
    data = float32_to_pcm16(resample(audio16, SAMPLE_RATE, 24000))
    step = int(24000 * args.chunk_ms / 1000) * 2
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    items: dict[str, dict] = {}
    async with websockets.connect(url + "?intent=transcription", max_size=None, open_timeout=30,
                                  additional_headers=headers) as ws:
        await asyncio.wait_for(ws.recv(), 30)  # session.created
        await ws.send(json.dumps({"type": "session.update", "session": {"type": "transcription", "audio": {
            "input": {"format": {"type": "audio/pcm", "rate": 24000},
                      "transcription": {"model": "whisper-1", "language": item.language},
                      "turn_detection": {"type": "server_vad",
                                         "silence_duration_ms": int(args.silence_threshold * 1000)}}}}}))
        await asyncio.wait_for(ws.recv(), 30)  # session.updated

        async def reader():
            while True:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 300))
                now = time.monotonic()
                kind, item_id = msg["type"], msg.get("item_id")
                if item_id is not None:
                    state = items.setdefault(item_id, {"uid": len(items) + 1, "text": "", "start": 0.0, "end": 0.0})
                if kind == "input_audio_buffer.speech_started":
                    state["start"] = msg["audio_start_ms"] / 1000
                elif kind == "input_audio_buffer.speech_stopped":
                    state["end"] = msg["audio_end_ms"] / 1000
                elif kind == "conversation.item.input_audio_transcription.delta":
                    state["text"] += msg["delta"]
                    res.partials.append((now, {"text": state["text"], "stable_text": state["text"],
                                               "utterance_id": state["uid"]}))
                elif kind == "conversation.item.input_audio_transcription.completed":
                    state["done"] = True
                    if msg["transcript"]:
                        res.finals.append((now, {"text": msg["transcript"], "language": item.language,
                                                 "start": state["start"], "end": state["end"],
                                                 "reason": "silence", "utterance_id": state["uid"]}))

        task = asyncio.create_task(reader())
        began = time.monotonic()
        for i, pos in enumerate(range(0, len(data), step)):
            await ws.send(json.dumps({"type": "input_audio_buffer.append",
                                      "audio": base64.b64encode(data[pos:pos + step]).decode()}))
            res.send_times.append(((pos + step) / 2 / 24000, time.monotonic()))
            await asyncio.sleep(max(0.0, began + (i + 1) * args.chunk_ms / 1000 / args.speed - time.monotonic()))
        # Every item that was committed gets its completed event: wait for the last one (the lane may lag).
        await asyncio.sleep(args.silence_threshold + 1.0)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and any(not s.get("done") for s in items.values()):
            await asyncio.sleep(0.2)
        task.cancel()
    return res


async def replay_deepgram(url: str, api_key: str | None, item: Item, args) -> Result:
    """Deepgram live, linear16 16 kHz, interim results; converted like replay_openai."""
    res = Result(item)
    tail = np.zeros(int((args.silence_threshold + 1.0) * SAMPLE_RATE), dtype=np.float32)
    data = float32_to_pcm16(np.concatenate([item.audio, tail]))
    step = int(SAMPLE_RATE * args.chunk_ms / 1000) * 2
    headers = {"Authorization": f"Token {api_key}"} if api_key else {}
    query = (f"?encoding=linear16&sample_rate={SAMPLE_RATE}&interim_results=true&language={item.language}"
             f"&endpointing={int(args.silence_threshold * 1000)}")
    uids: dict[float, int] = {}
    async with websockets.connect(url + query, max_size=None, open_timeout=30, additional_headers=headers) as ws:
        done = asyncio.Event()

        async def reader():
            while True:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 300))
                now = time.monotonic()
                if msg["type"] == "Metadata":
                    done.set()
                    return
                if msg["type"] != "Results":
                    continue
                uid = uids.setdefault(msg["start"], len(uids) + 1)
                text = msg["channel"]["alternatives"][0]["transcript"]
                if not msg["is_final"]:
                    res.partials.append((now, {"text": text, "stable_text": "", "utterance_id": uid}))
                elif text:
                    res.finals.append((now, {"text": text, "language": item.language, "start": msg["start"],
                                             "end": msg["start"] + msg["duration"], "utterance_id": uid,
                                             "reason": "silence" if msg["speech_final"] else "max_length"}))

        task = asyncio.create_task(reader())
        began = time.monotonic()
        for i, pos in enumerate(range(0, len(data), step)):
            await ws.send(data[pos:pos + step])
            res.send_times.append(((pos + step) / 2 / SAMPLE_RATE, time.monotonic()))
            await asyncio.sleep(max(0.0, began + (i + 1) * args.chunk_ms / 1000 / args.speed - time.monotonic()))
        await ws.send(json.dumps({"type": "CloseStream"}))
        await asyncio.wait_for(done.wait(), 300)
        task.cancel()
    return res


async def replay(url: str, api_key: str | None, item: Item, args) -> Result:
    res = Result(item)
    tail = np.zeros(int((args.silence_threshold + 1.0) * SAMPLE_RATE), dtype=np.float32)
    audio = np.concatenate([item.audio, tail])
    data = float32_to_pcm16(audio)
    step = int(SAMPLE_RATE * args.chunk_ms / 1000) * 2
    async with websockets.connect(url, max_size=None, open_timeout=30) as ws:
        if api_key:
            await ws.send(json.dumps({"api_key": api_key}))
            await asyncio.wait_for(ws.recv(), 30)
        await asyncio.wait_for(ws.recv(), 30)  # connected
        await ws.send(json.dumps({"command": "start", "audio_format": "pcm16",
                                  "silence_threshold": args.silence_threshold}))
        await asyncio.wait_for(ws.recv(), 30)
        done = asyncio.Event()

        async def reader():
            while True:
                msg = json.loads(await asyncio.wait_for(ws.recv(), 300))
                now = time.monotonic()
                if msg["type"] == "final":
                    res.finals.append((now, msg))
                elif msg["type"] == "partial":
                    res.partials.append((now, msg))
                elif msg["type"] == "status" and msg.get("state") == "stopped":
                    done.set()
                    return

        task = asyncio.create_task(reader())
        began = time.monotonic()
        for i, pos in enumerate(range(0, len(data), step)):
            await ws.send(data[pos:pos + step])
            res.send_times.append(((pos + step) / 2 / SAMPLE_RATE, time.monotonic()))
            await asyncio.sleep(max(0.0, began + (i + 1) * args.chunk_ms / 1000 / args.speed - time.monotonic()))
        await ws.send(json.dumps({"command": "stop"}))
        await asyncio.wait_for(done.wait(), 300)
        task.cancel()
    return res


def sent_at(res: Result, audio_s: float) -> float:
    for pos, t in res.send_times:
        if pos >= audio_s:
            return t
    return res.send_times[-1][1]


def speech_spans(audio: np.ndarray) -> list[tuple[float, float]]:
    from faster_whisper.vad import get_speech_timestamps

    spans = get_speech_timestamps(audio, min_silence_duration_ms=1000, speech_pad_ms=0)
    return [(s["start"] / SAMPLE_RATE, s["end"] / SAMPLE_RATE) for s in spans]


def analyse(res: Result) -> dict:
    item = res.item
    spans = speech_spans(item.audio)
    hyp = " ".join(m["text"] for _, m in res.finals)
    if os.environ.get("BENCH_VERBOSE"):
        for _, m in res.finals:
            print(f"  final [{m['language']}] {m['text']}", file=sys.stderr)
    out = {
        "name": item.name,
        "finals": len(res.finals),
        "stream_err": error_rate(item.reference, hyp, item.language) if item.reference else float("nan"),
        "whole_err": error_rate(item.reference, res.whole_text, item.language) if item.reference else float("nan"),
        "languages": sorted({m["language"] for _, m in res.finals}),
    }
    final_lat, first_lat = [], []
    for t, m in res.finals:
        if m["reason"] != "silence":
            continue
        ends = [e for s, e in spans if e <= m["end"] + 0.1 and e >= m["start"]]
        if ends:
            final_lat.append(t - sent_at(res, max(ends)))
    by_utt: dict[int, list] = {}
    for t, m in res.partials:
        by_utt.setdefault(m["utterance_id"], []).append((t, m))
    for _, f in res.finals:
        starts = [s for s, e in spans if f["start"] - 0.05 <= s <= f["end"]]
        first = by_utt.get(f["utterance_id"])
        if starts and first:
            first_lat.append(first[0][0] - sent_at(res, min(starts)))
    speech_s = sum(e - s for s, e in spans)
    changed = total = stable_changed = stable_total = 0
    finals_by_utt = {m["utterance_id"]: m for _, m in res.finals}
    for uid, plist in by_utt.items():
        final_words = normalize(finals_by_utt[uid]["text"]).split() if uid in finals_by_utt else []
        for i, (_, p) in enumerate(plist):
            words = normalize(p["text"]).split()
            nxt = normalize(plist[i + 1][1]["text"]).split() if i + 1 < len(plist) else final_words
            total += len(words)
            changed += sum(1 for k, w in enumerate(words) if k >= len(nxt) or nxt[k] != w)
            st = normalize(p["stable_text"]).split()
            stable_total += len(st)
            stable_changed += sum(1 for k, w in enumerate(st) if k >= len(final_words) or final_words[k] != w)
    out.update(
        first_partial_s=statistics.mean(first_lat) if first_lat else float("nan"),
        final_lat=final_lat,
        partials_per_s=len(res.partials) / speech_s if speech_s else 0.0,
        partial_changed=changed / total if total else 0.0,
        stable_changed=stable_changed / stable_total if stable_total else 0.0,
        first_lat=first_lat,
    )
    return out


REPLAYERS = {"ws": (replay, "/ws/transcribe"), "openai": (replay_openai, "/v1/realtime"),
             "deepgram": (replay_deepgram, "/v1/listen")}


def run_protocol(protocol: str, streams: int, url: str, http: str, args, item: Item, whole: str) -> dict:
    """``streams`` concurrent replays of ``item`` over one protocol, started ``--stagger`` s apart."""
    fn, path = REPLAYERS[protocol]
    target = url.split("/ws/")[0] + path

    async def one(k: int) -> Result:
        await asyncio.sleep(k * args.stagger)
        return await fn(target, args.api_key, item, args)

    async def all_of() -> list[Result]:
        return await asyncio.gather(*(one(k) for k in range(streams)))

    results = asyncio.run(all_of())
    analysed = []
    for res in results:
        res.whole_text = whole
        analysed.append(analyse(res))
    return {
        "protocol": protocol, "streams": streams,
        "stream_err": statistics.mean(a["stream_err"] for a in analysed),
        "whole_err": analysed[0]["whole_err"],
        "first": [x for a in analysed for x in a["first_lat"]],
        "final": [x for a in analysed for x in a["final_lat"]],
        "finals": sum(a["finals"] for a in analysed),
    }


def print_protocols(rows: list[dict]) -> None:
    head = f"{'protocol':<10}{'streams':>8}{'finals':>7}{'stream_err':>11}{'whole_err':>10}{'1st_delta':>10}" \
           f"{'1st_p95':>8}{'final_p50':>10}{'final_p95':>10}"
    print(head)
    print("-" * len(head))
    for r in rows:
        first = statistics.mean(r["first"]) if r["first"] else float("nan")
        print(f"{r['protocol']:<10}{r['streams']:>8}{r['finals']:>7}{r['stream_err']:>11.3f}{r['whole_err']:>10.3f}"
              f"{first:>10.2f}{pct(r['first'], 95):>8.2f}{pct(r['final'], 50):>10.2f}{pct(r['final'], 95):>10.2f}")
    print("1st_delta: s from speech start to the utterance's first partial (ws), delta (openai) or interim "
          "result (deepgram), mean and p95; final: s from end of speech to final / completed / is_final.\n")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    return float(np.percentile(values, q))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", help="WAV (or any audio) files; reference text in <name>.txt")
    ap.add_argument("--url", help="ws://host:port/ws/transcribe of a running server (default: start one)")
    ap.add_argument("--api-key")
    ap.add_argument("--speed", type=float, default=1.0, help="1.0 = real time")
    ap.add_argument("--chunk-ms", type=int, default=100)
    ap.add_argument("--silence-threshold", type=float, default=2.0)
    ap.add_argument("--models-dir", default=str(ROOT / "models"))
    ap.add_argument("--protocols", default="ws,openai,deepgram",
                    help="wire protocols compared on the LibriVox item (empty: none)")
    ap.add_argument("--streams", default="1,16", help="concurrent streams per protocol run, e.g. 1,16")
    ap.add_argument("--skip-items", action="store_true", help="only the protocol comparison")
    ap.add_argument("--stagger", type=float, default=0.37, help="seconds between stream starts (as bench_load)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench_ws_"))
    items = file_items(args.files) if args.files else builtin_items(tmp)
    proc = None
    url = args.url
    if not url:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "whisper_server.py"), "--mode", "ws", "--ws-port", str(port), "--no-auth",
             "--models-dir", args.models_dir, "--host", "127.0.0.1"],
            cwd=tmp, stdout=open(tmp / "server.log", "wb"), stderr=subprocess.STDOUT,
        )
        url = f"ws://127.0.0.1:{port}/ws/transcribe"
        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    print((tmp / "server.log").read_text(), file=sys.stderr)
                    return 1
                time.sleep(0.5)
    http = url.replace("ws://", "http://").replace("wss://", "https://").split("/ws/")[0]
    headers = {"X-API-Key": args.api_key} if args.api_key else {}
    rows = []
    protocol_rows = []
    try:
        for item in ([] if args.skip_items else items):
            res = asyncio.run(replay(url, args.api_key, item, args))
            r = httpx.post(f"{http}/transcribe", files={"file": ("a.wav", wav_bytes(item.audio), "audio/wav")},
                           headers=headers, timeout=300, verify=False)
            r.raise_for_status()
            res.whole_text = r.json()["text"]
            rows.append(analyse(res))
        protocols = [p for p in args.protocols.split(",") if p]
        librivox = [i for i in items if i.name.startswith("librivox")]
        if protocols and librivox:
            item = librivox[0]
            r = httpx.post(f"{http}/transcribe", files={"file": ("a.wav", wav_bytes(item.audio), "audio/wav")},
                           headers=headers, timeout=300, verify=False)
            r.raise_for_status()
            whole = r.json()["text"]
            for n in [int(x) for x in args.streams.split(",") if x]:
                for protocol in protocols:
                    protocol_rows.append(run_protocol(protocol, n, url, http, args, item, whole))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)

    print(f"speed {args.speed}x, chunk {args.chunk_ms} ms, silence_threshold {args.silence_threshold} s, {url}")
    if protocol_rows:
        print_protocols(protocol_rows)
    if not rows:
        return 0
    head = f"{'file':<18}{'finals':>7}{'stream_err':>11}{'whole_err':>10}{'1st_partial':>12}{'final_p50':>10}" \
           f"{'final_p95':>10}{'partials/s':>11}{'p_changed':>10}{'stable_chg':>11}  lang"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['name']:<18}{r['finals']:>7}{r['stream_err']:>11.3f}{r['whole_err']:>10.3f}"
              f"{r['first_partial_s']:>12.2f}{pct(r['final_lat'], 50):>10.2f}{pct(r['final_lat'], 95):>10.2f}"
              f"{r['partials_per_s']:>11.2f}{r['partial_changed']:>10.3f}{r['stable_changed']:>11.3f}  "
              f"{','.join(r['languages'])}")
    all_final = [x for r in rows for x in r["final_lat"]]
    all_first = [x for r in rows for x in r["first_lat"]]
    print("-" * len(head))
    print(f"{'overall':<18}{sum(r['finals'] for r in rows):>7}"
          f"{statistics.mean(r['stream_err'] for r in rows):>11.3f}{statistics.mean(r['whole_err'] for r in rows):>10.3f}"
          f"{statistics.mean(all_first) if all_first else float('nan'):>12.2f}{pct(all_final, 50):>10.2f}"
          f"{pct(all_final, 95):>10.2f}{statistics.mean(r['partials_per_s'] for r in rows):>11.2f}"
          f"{statistics.mean(r['partial_changed'] for r in rows):>10.3f}"
          f"{statistics.mean(r['stable_changed'] for r in rows):>11.3f}")
    print("err: WER (CER for ja/ko/zh); 1st_partial: s from speech start (mean); final_p50/p95: s from end of "
          "speech; partials/s: per second of speech; p_changed: partial words changed by the next partial/final; "
          "stable_chg: stable_text words that differ in the final.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
