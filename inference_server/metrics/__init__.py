"""`GET /metrics`: the server's counts in Prometheus text, from prometheus-client.

- `instruments`: what is counted and where each count comes from;
- `views`: the route and who may read it (`init_app`);
- `directory`: the files gunicorn's workers count in, and the master's part (marking a dead
  worker); `scrape`: reading them all as one (folding the dead workers' files first).

This package file imports nothing: gunicorn's master imports `directory` (through
`inference_server.gunicorn_hooks`), and nothing of the app may be imported before gevent
patches a worker.
"""
