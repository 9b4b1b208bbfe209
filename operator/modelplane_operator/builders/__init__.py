"""Pure functions from a resource to the manifests of its children."""
