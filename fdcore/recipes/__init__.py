"""Training recipes. Each is a flat, readable script; `recipes/` at the repository root launches the same code."""
