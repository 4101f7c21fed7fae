"""`python -m tts_compile serve`: api_v2's routes, a voice registry and OpenAI's speech route over the engine.

Needs the `serve` extra (`pip install tts-compile[serve]`: FastAPI, uvicorn, prometheus_client,
python-multipart); nothing else in tts_compile imports it. `replicas` (Ray Serve, the `ray` extra) is imported only by
`serve --replicas`.
"""

from .app import Settings, create_app
from .backend import Backend, Pipeline, StandIns
from .main import serve

__all__ = ["Settings", "create_app", "Backend", "Pipeline", "StandIns", "serve"]
