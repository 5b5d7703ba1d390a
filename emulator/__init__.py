"""splatpipe's local stack: emulators, the local Workflows engine and Batch runner, the demo."""
