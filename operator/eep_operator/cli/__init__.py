"""Command-line entry points other than the operator itself (`eep-operator status`)."""
