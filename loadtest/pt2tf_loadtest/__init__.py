"""Load tests before rollout: Locust over REST and gRPC, a concurrency sweep, an SLO gate and a report."""
