"""Edge models the cloud publishes: the signed registry edges fetch from, and the staged rollout."""
