"""Pure decisions: no I/O, no clock, no logging. Imported by `eep_operator.io` and the entry points."""
