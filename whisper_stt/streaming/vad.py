"""Incremental Silero VAD: speech probability for every 32 ms window of a live stream.

Uses the Silero model that ships inside faster-whisper (run with onnxruntime, one thread). The model is
recurrent (LSTM state ``h``/``c``) and looks at 64 samples of context before each 512-sample window;
both are carried from call to call here, so feeding a stream in pieces gives the same probabilities as
faster-whisper's whole-file ``get_speech_timestamps``. ``process`` is blocking CPU work (~0.1 ms per
window): call it off the event loop.
"""

from __future__ import annotations

import threading

import numpy as np

WINDOW = 512  # samples per probability at 16 kHz (32 ms)
CONTEXT = 64


class StreamingVAD:
    """One stream's VAD state. Not shared between streams; calls must not overlap."""

    def __init__(self) -> None:
        from faster_whisper.vad import get_vad_model

        self._session = get_vad_model().session  # one ONNX session for the process; run() is thread-safe
        self._lock = threading.Lock()  # guards this stream's state against overlapping calls
        self.reset()

    def reset(self) -> None:
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)
        self._rest = np.zeros(0, dtype=np.float32)

    @property
    def buffered(self) -> int:
        """Samples waiting for a whole window."""
        return len(self._rest)

    def process(self, samples: np.ndarray) -> np.ndarray:
        """Feed samples; return one probability per completed 512-sample window (float32 array)."""
        with self._lock:
            audio = np.concatenate([self._rest, samples.astype(np.float32, copy=False)])
            n = len(audio) // WINDOW
            self._rest = audio[n * WINDOW:].copy()
            if n == 0:
                return np.zeros(0, dtype=np.float32)
            windows = audio[: n * WINDOW].reshape(n, WINDOW)
            contexts = np.empty((n, CONTEXT), dtype=np.float32)
            contexts[0] = self._context
            if n > 1:
                contexts[1:] = windows[:-1, -CONTEXT:]
            batch = np.concatenate([contexts, windows], axis=1)
            probs, self._h, self._c = self._session.run(None, {"input": batch, "h": self._h, "c": self._c})
            self._context = windows[-1, -CONTEXT:].copy()
            return np.asarray(probs, dtype=np.float32).reshape(-1)[:n]
