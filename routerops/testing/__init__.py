"""Test helpers shipped with the library: a loopback fake OpenAI-compatible server."""
