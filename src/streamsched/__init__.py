"""streamsched: an event-streaming scheduler for machine-learning work on Kafka."""

__version__ = "0.1.0"
