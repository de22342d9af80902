"""The control plane: carries out what holdover/core decides (see docs/design.md).

The router behind the proxy's ports, the revision manager, the pin directory,
persistence and restore, the hand-over on reload, the ticker and tasks, and the
``Control`` facade the admin side uses.
"""
