"""What users build instead: Flask-JWT-Extended for tokens, Flask-Limiter per user, same model.

Written the way their documentation shows it: a login route issuing an access token, the
prediction route behind `@jwt_required()` with a per-identity limit (too large to trip).
"""

from __future__ import annotations

import os

from flask import Flask, jsonify, request
from flask_jwt_extended import JWTManager, create_access_token, get_jwt_identity, jwt_required
from flask_limiter import Limiter
from flask_limiter.util import get_remote_address
from model import predict

app = Flask(__name__)
app.config["JWT_SECRET_KEY"] = os.environ["PEER_JWT_SECRET"]  # one for every worker
JWTManager(app)
limiter = Limiter(get_remote_address, app=app, storage_uri="memory://")
USERS = {"admin": "admin123"}


@app.post("/login")
def login():
    body = request.get_json(silent=True) or {}
    if USERS.get(body.get("username")) != body.get("password"):
        return jsonify({"msg": "bad username or password"}), 401
    return jsonify(access_token=create_access_token(identity=body["username"]))


@app.post("/predict")
@jwt_required()
@limiter.limit("100000000/minute", key_func=get_jwt_identity)
def predict_view():
    return predict(request.get_json(silent=True))
