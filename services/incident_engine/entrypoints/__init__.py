"""Entrypoints: composition root, consumer, timers, relay, HTTP."""
