"""The inference server application: `app.create_app()` wires settings, auth, models and routes.

This package file imports nothing: gunicorn's master imports `inference_server.worker` to find
its worker class, and nothing of the app (Flask, the stores, filelock) may be imported before
gevent patches a worker.
"""
