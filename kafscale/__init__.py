"""KafScale: a Kafka-protocol-compatible broker whose log lives in object storage."""

__version__ = "0.1.0"
