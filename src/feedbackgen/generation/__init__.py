from feedbackgen.generation.jobs import (RequestStream, read_requests, requests_file, requests_from_dataset,
                                        requests_from_split, run_generation)

__all__ = ["RequestStream", "read_requests", "requests_file", "requests_from_dataset", "requests_from_split",
           "run_generation"]
