from feedbackgen.generation.jobs import read_requests, requests_from_split, run_generation

__all__ = ["read_requests", "requests_from_split", "run_generation"]
