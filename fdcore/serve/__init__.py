"""``fdcore serve``: an HTTP scoring service (FastAPI + uvicorn) with dynamic batching, backpressure, bearer-key
auth, Prometheus metrics and the KServe Open Inference Protocol v2 subset. See docs/serve.md.

Imported only by ``fdcore serve`` (the ``serve`` extra: fastapi, uvicorn, prometheus-client, python-multipart).
"""

from fdcore.serve.app import Refusal, ServeError, ServeOptions, create_app, run_server

__all__ = ["Refusal", "ServeError", "ServeOptions", "create_app", "run_server"]
