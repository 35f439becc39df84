"""gRPC: the server, the auth interceptor, proto conversion and the error → status mapping."""
