"""``chargen serve``: the OpenAI-compatible HTTP app and its page (``app``, ``web/``) over a
continuous ``batcher`` of sampling requests. Starlette and uvicorn are imported only when a
server is built."""
