"""feedbackgen: learn how each user writes and rates, and generate the feedback they would give."""

from feedbackgen.types import Feedback, FeedbackRequest

__version__ = "0.1.0"
__all__ = ["Feedback", "FeedbackRequest", "__version__"]
