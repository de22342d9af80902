"""Worker processes: start, health-check, restart and stop them (see supervisor.py)."""
