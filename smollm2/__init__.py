"""SmolLM2-135M-Instruct and real eval data from PyPI packages: the real small model of DESIGN.md section 5."""
