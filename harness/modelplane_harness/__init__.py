"""modelplane's dev-only harness: what tests, benchmarks and `modelplane dev` share.

The local control plane (`cluster`), the real kubelet node (`node`), images built here
(`images`), the operator as a process (`operator`), load generation (`loadgen`) and
polling (`waiting`). Product packages never import it (an import-linter contract).
"""
