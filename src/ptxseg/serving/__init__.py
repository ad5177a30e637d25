"""The web service: FastAPI app, upload checks, rendering, model card and the page."""
