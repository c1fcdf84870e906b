"""The ``streamflow`` commands this package adds (``streamflow.cli.COMMAND_MODULES``):
``kafka-quota``, which talks to a Kafka broker and so lives with the Kafka connector,
not in the engine."""

from __future__ import annotations

import argparse
from typing import Callable

from streamflow.argtypes import percentage, positive_int
from streamflow.errors import StreamflowError

AddCommand = Callable[..., argparse.ArgumentParser]


def register(command: AddCommand) -> None:
    """Add this package's commands with ``command(name, handler, help, description)``."""
    quota = command(
        "kafka-quota", kafka_quota, "show or set a Kafka broker's own quotas of a client id",
        "Show, or set and then show, the quotas that a Kafka broker itself enforces for a client id "
        "(bytes/s produced and fetched, and a share of request time; the broker throttles every "
        "connection of that client id). A KafkaSpout's client id is <topology>-<component> unless "
        "set. These are not streamflow's own records/bytes quotas, which the spout enforces and "
        "-c kafka.quotas= (or set-config) sets; both may apply. Speaks AlterClientQuotas and "
        "DescribeClientQuotas v0 over plain TCP to a bootstrap broker (no SASL, no TLS).")
    quota.add_argument("--bootstrap", required=True, metavar="HOST:PORT",
                       help="a broker of the cluster (or a comma-separated list: the first that answers)")
    quota.add_argument("--client-id", required=True, metavar="ID", help="the Kafka client id")
    quota.add_argument("--producer-byte-rate", type=positive_int, metavar="B", help="bytes/s it may produce")
    quota.add_argument("--consumer-byte-rate", type=positive_int, metavar="B", help="bytes/s it may fetch")
    quota.add_argument("--request-percentage", type=percentage, metavar="P",
                       help="percent of one request handler thread's time its requests may take")
    quota.add_argument("--remove", nargs="+", action="extend", default=[], metavar="KEY",
                       choices=("producer_byte_rate", "consumer_byte_rate", "request_percentage"),
                       help="quotas to remove (producer_byte_rate, consumer_byte_rate, request_percentage)")


def kafka_quota(args: argparse.Namespace) -> int:
    """Set the quotas asked for, if any, then print the client id's quotas; returns 0."""
    from streamflow_connectors.kafka.admin import QUOTA_KEYS, QuotaAdmin

    values = {key: value for key in QUOTA_KEYS if (value := getattr(args, key)) is not None}
    both = sorted(set(values) & set(args.remove))
    if both:
        raise StreamflowError(f"--remove {both[0]} and a value for it at once")
    with QuotaAdmin(args.bootstrap) as admin:  # its KafkaClientError is a one-line StreamflowError
        if values or args.remove:
            quotas = admin.set(args.client_id, values, args.remove)
        else:
            quotas = admin.describe(args.client_id)
    if not quotas:
        print(f"client id {args.client_id}: no broker quotas")
    for key, value in sorted(quotas.items()):
        print(f"{key}={int(value) if value.is_integer() else value}")
    return 0
