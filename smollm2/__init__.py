"""SmolLM2-135M-Instruct and real eval data from PyPI packages: the project's real small model (docs/smollm2.md,
docs/testbed.md)."""
