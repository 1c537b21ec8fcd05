"""A researcher's own workload, as a gin file imports it (`import user_pkg.workload`)."""
