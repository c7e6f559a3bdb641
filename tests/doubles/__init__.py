"""Test doubles of external services that speak their real protocols over real sockets (one of each, shared by
every test that needs it)."""
