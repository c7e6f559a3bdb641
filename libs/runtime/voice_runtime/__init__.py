"""Shared runtime of every voice-platform service: settings, logging, bus, telemetry, HTTP health."""
