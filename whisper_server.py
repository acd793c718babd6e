#!/usr/bin/env python3
"""Entry point: python whisper_server.py --mode ws --ws-port 8000 ... (see --help)."""

import sys

from whisper_stt.cli import main

if __name__ == "__main__":
    sys.exit(main())
