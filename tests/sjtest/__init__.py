"""Helpers shared by the sj-proxy integration tests and the demo."""
