"""The space file and its checks: the YAML's validated config object (`config`), `--set` overrides, the search
space's parameters, the study store's URL rules, and the dry run's checks of every file and store a sweep will
use. Nothing here starts Ray, trains or evaluates."""
