"""Fixtures for the crm side (owned by that area's tests)."""
