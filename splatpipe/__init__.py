"""splatpipe's Python SDK (`splatpipe.client`) and command line (`splatpipe.cli`)."""

from splatpipe.client import Client, RequestHandle, SplatpipeError

__all__ = ["Client", "RequestHandle", "SplatpipeError"]
