"""Caller transports: one module per wire protocol (``base`` says what a transport is)."""
