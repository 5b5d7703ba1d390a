"""Accepting a request: validating its body, deduplicating it, turning upload events and video
uploads into requests, issuing its callback token."""
