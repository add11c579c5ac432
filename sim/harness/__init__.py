"""The simulation harness: runs a scenario's modes as real processes and writes the report."""
