"""The local Google Cloud Workflows engine: runs `workflows/*.yaml` unchanged.

Modules: `definition` (parse and validate), `expressions` (`${…}`), `stdlib` (library
functions), `interpreter` (steps), `http_calls` and `connectors` (`call:` targets),
`executions` (executions store), `rest_api` / `grpc_api` / `port_mux` (the Executions API on one
port), `server` (the process), `client` (the real `ExecutionsClient` pointed at it).
"""
