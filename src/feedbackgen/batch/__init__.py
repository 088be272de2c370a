"""Batch generation (above `models`): request files and streams, resumable jobs that write a
feedback file shard by shard (`jobs`), and the same jobs spread over Ray actors (`ray_engine`)."""

from feedbackgen.batch.jobs import (RequestStream, read_requests, requests_file, requests_from_dataset,
                                   requests_from_split, run_generation)

__all__ = ["RequestStream", "read_requests", "requests_file", "requests_from_dataset", "requests_from_split",
           "run_generation"]
