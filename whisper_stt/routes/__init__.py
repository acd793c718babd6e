"""HTTP and WebSocket routes. Thin: they parse, authorise and hand work to the engine."""
