"""Self-hosted speech-to-text server on faster-whisper (REST + WebSocket)."""

import os

# numpy's OpenBLAS would otherwise start a thread per core and busy-wait in them after every matrix
# product. The only products here are the mel filter banks of short clips (80 x 201 by a few hundred
# frames), where that costs several times the CPU of the product itself: on a 2-core box the mel of an
# 8 s clip took 12.7 ms of CPU with the default against 4.4 ms with one thread, and the spinning thread
# took about a tenth of a core beside 32 real-time streams. It has to be set before numpy is imported;
# an operator's own setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "1.0.0"
