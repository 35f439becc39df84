"""The core: what Orisun does, in terms of ``orisun.model``; knows nothing of gRPC."""
