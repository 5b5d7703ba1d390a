"""splatpipe control plane: the Cloud Functions (entry points in main.py) and the packages by
concern they hand the work to: edge, intake, queue_store, dispatch, status, lifecycle, webhooks."""
