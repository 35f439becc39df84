"""NATS: the embedded nats-server child process and Orisun's client connection to it."""
