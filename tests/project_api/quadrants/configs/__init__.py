"""Configs of the quadrants test project."""
