"""What the edge agent and the cloud service both run on (no imports of edge, cloud or sim)."""
