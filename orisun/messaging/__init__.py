"""NATS: the live feed and pub/sub topics on JetStream, over a client connection.

The embedded nats-server child process that serves it is in ``orisun.runtime.nats_server``.
"""
