"""The web app and serving API: Gradio UI at /, REST under /api/v1/, one FastAPI app.

    python -m webapp --model tiny            # all in one process
    python app.py                            # the same, as a Hugging Face Space runs it

`create_app(Config(...))` in webapp.server builds the application; the other modules each
do one job (wire format, limits, auth, the model engine, the split-deployment client, the
REST routes, the Gradio UI).
"""
