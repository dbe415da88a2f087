"""The README's Flask quick start, as a file that runs as written (from the project root):

export CANARY_MW_STORE=redis://127.0.0.1:6379/0  # a Redis you may write to: examples/README.md
python3 -m http.server 8001 --bind 127.0.0.1 &  # stands in for the new version
gunicorn -w 2 -b 127.0.0.1:8000 examples.quickstart_flask:app &
curl -i http://127.0.0.1:8000/  # served by this app, X-Canary-Version: stable
canary-mw ip add 127.0.0.1  # you, to the canary
curl -i http://127.0.0.1:8000/  # the listing from port 8001, X-Canary-Version: canary
canary-mw ip remove 127.0.0.1  # and back
curl -i http://127.0.0.1:8000/  # X-Canary-Version: stable
"""

import os

from flask import Flask

from canary_mw import CanaryWSGI

app = Flask(__name__)


@app.route("/")
def index() -> str:
    return "served by this app\n"


app.wsgi_app = CanaryWSGI(
    app.wsgi_app,
    # The store every instance reads the rules from; `canary-mw` reads the same variable.
    store=os.environ.get("CANARY_MW_STORE", "redis://127.0.0.1:6379/0"),
    canary_url=os.environ.get("CANARY_URL", "http://127.0.0.1:8001"),  # the new version
)
