"""The BentoML service that serves a packaged router (see docs/serving.md)."""
