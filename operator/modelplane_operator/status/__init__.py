"""Pure functions from observed children to a resource status."""
