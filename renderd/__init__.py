"""renderd-py: a map tile stack around a ZeroMQ render daemon."""

__version__ = "0.1.0"
