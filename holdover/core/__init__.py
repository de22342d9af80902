"""The pure core: lifecycles, routing and pin policy as plain data and functions.

Nothing here does I/O, starts a task or reads a clock: callers pass ``now`` in, so every
decision is a value that a test can check exhaustively (see tests of core/).
"""
