"""What `trainables`, `eval`, `sweep` and `organism` share without importing each other: it imports none of them."""

import logging as _logging

# transformers imports torchao (the quantisation attack's library) wherever it is installed; torchao then warns
# that its GPU kernels do not load on this torch, and torch that one of torchao's Enums is registered the old
# way. Neither matters here: every entry point imports this package before transformers, so they stay quiet.
for _name in ("torchao", "torch.utils._pytree"):
    _logging.getLogger(_name).setLevel(_logging.ERROR)
