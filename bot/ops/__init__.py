"""Operating the bot: Prometheus metrics, readiness checks and the small HTTP server that serves both."""
