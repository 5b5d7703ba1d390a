"""The HTTP edge: routes, JSON bodies and error answers, caller identity; the only place that
knows HTTP. The routes hand the work to intake, lifecycle, status and webhooks."""
