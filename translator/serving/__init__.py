"""``translator serve``: an HTTP translation service over a trained run.

``batching`` (a micro-batcher that knows nothing of HTTP), ``schemas`` (request models and
limits), ``app`` (``create_app(translator, settings)``), ``server`` (uvicorn on a bound
socket, clean stop) and ``static/`` (the demo page). Serving depends on the rest of the
package, never the reverse, and never imports training.
"""
