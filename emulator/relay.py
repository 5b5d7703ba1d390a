"""Local Eventarc: Cloud Storage notifications on the Pub/Sub emulator -> binary-mode CloudEvents.

fake-gcs-server publishes a message per object change (GCS notification format: attributes
`eventType`, `bucketId`, `objectId`, `objectGeneration`, …; data = the object resource JSON).
The relay pulls them from a subscription and POSTs each finalize event of the trigger's bucket to
the function as Eventarc does: `ce-specversion`, `ce-id`, `ce-source`
(`//storage.googleapis.com/projects/_/buckets/{bucket}`), `ce-type`
(`google.cloud.storage.object.v1.finalized`), `ce-subject` (`objects/{name}`), `ce-time`,
`ce-bucket` headers, the object as the JSON body.

Delivery is at least once: a message is acked only after a 2xx; otherwise its ack deadline is set
to a backoff (1, 2, 4 … 60 s) so Pub/Sub delivers it again.

    python -m emulator.relay --target http://127.0.0.1:PORT --bucket UPLOADS [--topic gcs-events]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import logging
import signal
import sys
import threading
import warnings
from collections.abc import Mapping, Sequence

import requests

from emulator.services import DEFAULT_PROJECT

log = logging.getLogger("emulator.relay")

EVENT_TYPES = {
    "OBJECT_FINALIZE": "google.cloud.storage.object.v1.finalized",
    "OBJECT_DELETE": "google.cloud.storage.object.v1.deleted",
    "OBJECT_ARCHIVE": "google.cloud.storage.object.v1.archived",
    "OBJECT_METADATA_UPDATE": "google.cloud.storage.object.v1.metadataUpdated",
}
MAX_BACKOFF_SECONDS = 60


def cloud_event(message_id: str, attributes: Mapping[str, str], data: bytes,
                publish_time: str | None = None) -> tuple[dict[str, str], bytes] | None:
    """Headers and body of the binary-mode CloudEvent for one notification; None if it is none."""
    ce_type = EVENT_TYPES.get(attributes.get("eventType", ""))
    if ce_type is None:
        return None
    try:
        obj = json.loads(data) if data else {}
    except ValueError:
        obj = {}
    bucket = str(obj.get("bucket") or attributes.get("bucketId", ""))
    name = str(obj.get("name") or attributes.get("objectId", ""))
    if not bucket or not name:
        return None
    obj.setdefault("bucket", bucket)
    obj.setdefault("name", name)
    if "generation" not in obj and attributes.get("objectGeneration"):
        obj["generation"] = attributes["objectGeneration"]
    when = attributes.get("eventTime") or publish_time or dt.datetime.now(dt.UTC).isoformat()
    headers = {
        "Content-Type": "application/json",
        "ce-specversion": "1.0",
        "ce-id": message_id,
        "ce-source": f"//storage.googleapis.com/projects/_/buckets/{bucket}",
        "ce-type": ce_type,
        "ce-subject": f"objects/{name}",
        "ce-time": when,
        "ce-bucket": bucket,
    }
    return headers, json.dumps(obj).encode()


class Relay:
    """Pull, convert, deliver, ack — or back off and let Pub/Sub redeliver."""

    def __init__(self, project: str, subscription: str, target: str, *, bucket: str | None = None,
                 event_type: str = EVENT_TYPES["OBJECT_FINALIZE"], timeout: float = 60.0) -> None:
        from google.cloud import pubsub_v1

        self.subscriber = pubsub_v1.SubscriberClient()
        self.subscription = self.subscriber.subscription_path(project, subscription)
        self.target = target
        self.bucket = bucket
        self.event_type = event_type
        self.timeout = timeout
        self.attempts: dict[str, int] = {}
        self.delivered = 0
        self.session = requests.Session()
        self.stop = threading.Event()

    def deliver(self, message_id: str, attributes: Mapping[str, str], data: bytes, publish_time: str | None) -> bool:
        """True when the message is done with (delivered, or not for this trigger)."""
        event = cloud_event(message_id, attributes, data, publish_time)
        if event is None:
            return True
        headers, body = event
        if headers["ce-type"] != self.event_type or (self.bucket and headers["ce-bucket"] != self.bucket):
            return True
        try:
            resp = self.session.post(self.target, data=body, headers=headers, timeout=self.timeout)
        except requests.RequestException as exc:
            log.warning("event %s (%s): delivery failed: %s", message_id, headers["ce-subject"], exc)
            return False
        if 200 <= resp.status_code < 300:
            self.delivered += 1
            log.info("event %s %s -> %s", message_id, headers["ce-subject"], resp.status_code)
            return True
        log.warning("event %s %s -> %s %s; will retry", message_id, headers["ce-subject"], resp.status_code,
                    resp.text[:200])
        return False

    def poll_once(self, max_messages: int = 10) -> int:
        from google.api_core import exceptions as gexc

        try:
            # return_immediately: the emulator's long poll does not wake for redeliveries.
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                resp = self.subscriber.pull(request={"subscription": self.subscription, "max_messages": max_messages,
                                                     "return_immediately": True}, timeout=10)
        except (gexc.DeadlineExceeded, gexc.ServiceUnavailable, gexc.RetryError):
            return 0
        acks: list[str] = []
        for rm in resp.received_messages:
            msg = rm.message
            publish = msg.publish_time.isoformat() if msg.publish_time else None
            if self.deliver(msg.message_id, dict(msg.attributes), bytes(msg.data), publish):
                acks.append(rm.ack_id)
                self.attempts.pop(msg.message_id, None)
            else:
                n = self.attempts.get(msg.message_id, 0) + 1
                self.attempts[msg.message_id] = n
                delay = min(2 ** (n - 1), MAX_BACKOFF_SECONDS)
                self.subscriber.modify_ack_deadline(request={"subscription": self.subscription,
                                                             "ack_ids": [rm.ack_id], "ack_deadline_seconds": delay})
        if acks:
            self.subscriber.acknowledge(request={"subscription": self.subscription, "ack_ids": acks})
        return len(resp.received_messages)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                if self.poll_once() == 0:
                    self.stop.wait(0.2)
            except Exception as exc:  # the emulator restarting, say: keep relaying
                log.warning("relay poll failed: %s", exc)
                self.stop.wait(1.0)


def ensure_topic_and_subscription(project: str, topic: str, subscription: str, ack_deadline: int = 60) -> None:
    """Create the topic (before fake-gcs-server publishes) and the relay's subscription."""
    from google.api_core import exceptions as gexc
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    topic_path = publisher.topic_path(project, topic)
    with contextlib.suppress(gexc.AlreadyExists):
        publisher.create_topic(request={"name": topic_path})
    with contextlib.suppress(gexc.AlreadyExists):
        subscriber.create_subscription(request={"name": subscriber.subscription_path(project, subscription),
                                                "topic": topic_path, "ack_deadline_seconds": ack_deadline})


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m emulator.relay", description="local Eventarc for GCS events")
    p.add_argument("--project", default=DEFAULT_PROJECT)
    p.add_argument("--topic", default="gcs-events")
    p.add_argument("--subscription", default="eventarc-on-upload")
    p.add_argument("--target", required=True, help="URL of the CloudEvent function")
    p.add_argument("--bucket", default=None, help="only events of this bucket (the trigger's filter)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    ensure_topic_and_subscription(args.project, args.topic, args.subscription)
    relay = Relay(args.project, args.subscription, args.target, bucket=args.bucket)
    signal.signal(signal.SIGTERM, lambda *_: relay.stop.set())
    signal.signal(signal.SIGINT, lambda *_: relay.stop.set())
    log.info("relaying %s -> %s", relay.subscription, args.target)
    relay.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
