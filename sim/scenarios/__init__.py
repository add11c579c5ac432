"""Scenario files (`*.yaml` here) and their model: the fleets, links and modes the harness runs."""
