"""Live mode: a Tyk-compatible receiver (and relay) that spools deliveries for the store's single writer."""
