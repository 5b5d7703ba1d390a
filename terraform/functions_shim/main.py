# The root module of the deployed functions source (Terraform zips it next to the `functions`
# package): Cloud Functions loads `main.py` at the root and looks the entry point up in it.
from functions.main import api, dispatch, on_upload, queue  # noqa: F401
