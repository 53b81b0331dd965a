"""Fixtures for the redis side (owned by that area's tests)."""
