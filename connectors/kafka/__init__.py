"""Kafka connectors: :class:`KafkaSpout` (source) and :class:`KafkaBolt` (sink).

Written against the Kafka protocol only, with librdkafka's client (confluent-kafka), so
they run on Apache Kafka, Redpanda or any compatible broker.
"""

from streamflow_connectors.kafka.retry import Backoff
from streamflow_connectors.kafka.sink import KafkaBolt
from streamflow_connectors.kafka.spout import KafkaSpout

__all__ = ["Backoff", "KafkaBolt", "KafkaSpout"]
