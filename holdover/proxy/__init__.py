"""The proxy data plane: bytes in from clients, bytes out to workers and back.

``http1`` holds the socket-free HTTP rules; ``server.ClientConnection`` is the client
side; ``upstream.UpstreamConnection`` and ``UpstreamPool`` are the worker side.  The
only awaited operation on the request path is opening a new worker connection.
"""
