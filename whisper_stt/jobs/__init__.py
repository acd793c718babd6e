"""Durable transcription jobs (POST /v1/jobs): stores, runner, webhooks."""
