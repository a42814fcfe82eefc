"""`python -m inference_server ...`: the command line, as `python run.py ...` (the job consumer
that the server starts is run this way, whatever the working directory)."""

from .cli import main

main()
