"""Data-plane processes: several processes proxying on one public port.

With ``[gateway] processes = N`` (N > 1) the control process (holdover/app.py,
holdover/control/) keeps the supervisor, revisions, the store and the admin side, and
starts N plane processes that accept on the shared listening socket.  A plane is the
proxy (holdover/proxy/) behind its own implementation of the proxy's ports, fed by its
control channel.  It imports the proxy and core only: docs/design.md, "Several
processes".
"""
