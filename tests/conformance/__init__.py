"""Conformance tests: real Kafka clients (kcat, kafka-python, aiokafka, confluent-kafka)
against a real broker process. They arrive with the broker (`scripts/serve`); the protocol
toolkit's own tests live one level up."""
