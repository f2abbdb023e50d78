"""``kafscale`` admin commands (topics, groups, cluster, produce, consume) and the small Kafka
client under them, built on KafScale's own codecs; they work against any Kafka-compatible
broker. The broker never imports this package."""
