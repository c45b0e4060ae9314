"""Network lab for integration tests: netlab (namespaces, impairments), nfqdelay (NFQUEUE delay helper)."""
