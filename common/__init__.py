"""What `trainables`, `eval`, `sweep` and `organism` share without importing each other: it imports none of them."""
