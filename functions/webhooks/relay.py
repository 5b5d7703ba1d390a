"""`POST /webhook/{request_id}` on the IAM-only `queue` function: send a request's webhook, with
the target checked again at sending time.

The workflow builds the webhook body (it knows the final state, outputs, error and warnings) and
hands it here, which adds the request's estimated `cost` (core.pricing, from the record), instead of posting to the caller's URL itself: Cloud Workflows' `http.post` would
connect to whatever the name resolves to by then, an internal address included. Here the URL is
the one stored with the request (never one from the body), and `functions.webhooks.sender.deliver`
resolves it now, refuses it if any address is internal, and connects to the address it checked.

Answers: 200 `{"delivered": true, "status": S}`; 422 `webhook_refused` when the target is (now)
inside a private network (retrying will not help); 502 `webhook_failed` when it could not be
delivered (the workflow's retry predicate retries a 502); 404 for an unknown request or one
without a webhook.
"""

from __future__ import annotations

import flask

from core import pricing
from functions.context import Services
from functions.edge.json_api import ApiError, json_response, read_json_object
from functions.edge.routing import Route, collect
from functions.errors import InvalidRequestError, NotFoundError
from functions.intake import validation
from functions.lifecycle import access
from functions.webhooks import sender as webhook

ROUTES: list[Route] = []


@collect(ROUTES)("POST", "/webhook/{request_id}")
def send(request: flask.Request, svc: Services, request_id: str) -> flask.Response:
    validation.request_id(request_id)
    body = read_json_object(request)
    record = access.lookup(svc, request_id)
    if not record.webhook_url:
        raise NotFoundError("the request has no webhook_url", "no_webhook")
    # The workflow does not know the price; the record's stages (machines and times) do.
    body = {**body, "cost": pricing.configured_summary(record)}
    outcome = webhook.deliver(record.webhook_url, body, local=svc.settings.local_mode)
    if outcome.delivered:
        return json_response(outcome.to_json())
    if outcome.error and outcome.error.startswith("refused"):
        raise InvalidRequestError(outcome.error, "webhook_refused")
    # The gateway's own status: the workflow's retry predicate retries a 502.
    raise ApiError(502, "webhook_failed", outcome.error or "the webhook was not delivered")

