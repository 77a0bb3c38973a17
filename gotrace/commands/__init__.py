"""One module per gotrace command, each returning or yielding data; `tracing` holds what the tracing commands share."""

# The cost guard's default budget, in percent of the traced process's CPU time (README, "The cost guard").
DEFAULT_MAX_OVERHEAD_PCT = 5.0
