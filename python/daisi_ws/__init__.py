"""daisi-ws: a WebSocket gateway delivering NATS events to authenticated browser sockets."""

__version__ = "0.1.0"
