"""A bare Flask app serving the demo model: no auth, no limits. The ceiling of this stack."""

from __future__ import annotations

from flask import Flask, request
from model import predict

app = Flask(__name__)


@app.post("/predict")
def predict_view():
    return predict(request.get_json(silent=True))
