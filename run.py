"""Start the inference server: `python run.py [--config FILE] [--host H] [--port P] [--workers N]`.

Other commands: `python run.py --help`.
"""

from inference_server.cli import main

if __name__ == "__main__":
    main()
