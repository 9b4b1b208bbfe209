"""Level-based reconcile functions, one per kind."""
