"""``chargen serve``: an OpenAI-compatible HTTP server over a trained run.

``server`` (loading a run and serving it until Ctrl-C) builds the app of ``app`` (the routes of
``routes`` behind one guard, over the ``state`` of ``state``), whose request bodies are the pydantic
models of ``schema`` and whose answers go out through ``streaming``; every generation is decoded in a
continuous ``batcher`` (``request``: what its caller holds), in a process of its own
(``process_batcher``). Starlette, uvicorn and pydantic are imported only when a server is built:
``server`` and ``state`` import nothing heavy at their top, and only the server imports the rest.
"""
