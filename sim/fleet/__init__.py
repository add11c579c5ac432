"""Running a small fleet for real: a cloud process and edge agent processes on loopback."""
