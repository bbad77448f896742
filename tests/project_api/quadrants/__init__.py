"""quadrants: a test project made of scenic's public API."""
