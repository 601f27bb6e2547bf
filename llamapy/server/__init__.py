"""llamapy serve: the ASGI app, its slots and the one engine thread that batches every active sequence."""
