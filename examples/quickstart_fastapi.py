"""The README's FastAPI quick start, as a file that runs as written (from the project root):

export CANARY_MW_STORE=redis://127.0.0.1:6379/0  # a Redis you may write to: examples/README.md
python3 -m http.server 8001 --bind 127.0.0.1 &  # stands in for the new version
uvicorn examples.quickstart_fastapi:app --port 8000 --lifespan on --no-proxy-headers &
curl -i http://127.0.0.1:8000/  # {"served_by":"this app"}, X-Canary-Version: stable
canary-mw ip add 127.0.0.1  # you, to the canary
curl -i http://127.0.0.1:8000/  # the listing from port 8001, X-Canary-Version: canary
canary-mw ip remove 127.0.0.1  # and back
curl -i http://127.0.0.1:8000/  # X-Canary-Version: stable
"""

import os

from fastapi import FastAPI

from canary_mw import CanaryRouter

app = FastAPI()


@app.get("/")
async def index() -> dict[str, str]:
    return {"served_by": "this app"}


app.add_middleware(
    CanaryRouter,
    # The store every instance reads the rules from; `canary-mw` reads the same variable.
    store=os.environ.get("CANARY_MW_STORE", "redis://127.0.0.1:6379/0"),
    canary_url=os.environ.get("CANARY_URL", "http://127.0.0.1:8001"),  # the new version
    trusted_proxies=[],  # your load balancers' addresses (see "The client IP")
)
