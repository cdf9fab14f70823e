"""streamsched: an event-streaming scheduler for machine-learning work on Kafka."""

__version__ = "0.1.0"


def __getattr__(name: str) -> object:
    """``from streamsched import Client`` without importing Kafka for users of the core."""
    if name == "Client":
        from streamsched.client import Client

        return Client
    raise AttributeError(f"module 'streamsched' has no attribute {name!r}")
