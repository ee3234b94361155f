"""Builders and fixtures shared by the tests (not installed)."""
