"""Fixtures for the pbx side (owned by that area's tests)."""
