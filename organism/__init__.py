"""The model organism: a tiny reasoning LM trained on a synthetic world it must partly forget."""
