"""The shared core: the facts both planes and the SDK read (the request record and its states, the
stage registry and options, workspace file names, the Batch task contract, media types, the
API's token header, the local stack's state file) and the Cloud Storage / Firestore clients.
No web framework, Redis or Google Cloud library is imported at module level."""
