"""Webhooks: the signed delivery a finished request sends, its relay through the queue function,
and the signature scheme."""
