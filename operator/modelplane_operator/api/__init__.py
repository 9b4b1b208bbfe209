"""The modelplane.io/v1alpha1 API as pydantic models (the source of the CRDs)."""
