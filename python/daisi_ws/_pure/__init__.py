"""Pure-Python twins of the compiled hot paths (same names, same behaviour)."""
