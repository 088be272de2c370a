"""feedbackgen: learn how each user writes and rates, and generate the feedback they would give."""

from feedbackgen.types import Feedback, FeedbackRequest

__version__ = "0.1.0"
__all__ = ["Feedback", "FeedbackRequest", "__version__", "load"]


def load(path):
    """Whatever model the folder `path` holds, ready to use: a generator or a choice model (the one
    model-folder format, `feedbackgen.models.folder`). Raises FeedbackgenError when it holds none."""
    # imported here: `import feedbackgen` for the types alone stays light (no torch); these two
    # register the generators and the choice models the folder may name
    import feedbackgen.models
    import feedbackgen.recommend  # noqa: F401
    from feedbackgen.models.folder import load as load_folder

    return load_folder(path)
