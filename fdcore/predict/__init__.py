"""Fault-tolerant, resumable, sharded ensemble inference over folders of untrusted images (``fdcore predict``)."""

from fdcore.predict.runner import (EXIT_COMPLETE, EXIT_PARTIAL, EXIT_USER_ERROR, PredictOptions, PredictSummary,
                                   run_predict)
from fdcore.predict.state import PredictError

__all__ = ["EXIT_COMPLETE", "EXIT_PARTIAL", "EXIT_USER_ERROR", "PredictError", "PredictOptions", "PredictSummary",
           "run_predict"]
