"""The c0 node: the I/O shell around `protocol/`."""
