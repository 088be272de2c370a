"""The HTTP service and its web pages.

    feedbackgen serve MODELDIR... --dataset DIR [--annotate TASK] [--api-keys FILE]

`create_app` builds the FastAPI application; `run` serves it with uvicorn. See `app.py` for the
endpoints and error codes, `batching.py` for how concurrent requests share a model batch.
"""

from feedbackgen.serve.app import create_app, run
from feedbackgen.serve.service import ServeConfig

__all__ = ["ServeConfig", "create_app", "run"]
