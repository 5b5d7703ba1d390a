"""splatpipe control plane: the Cloud Functions, the Redis queue and the job record."""
