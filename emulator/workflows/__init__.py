"""The local Google Cloud Workflows engine: runs `workflows/*.yaml` unchanged.

Modules: `definition` (parse and validate), `expressions` (`${…}`), `stdlib` (library
functions), `interpreter` (steps), `http_calls` and `connectors` (`call:` targets),
`executions` (executions store), `grpc_api` (the Executions API), `rest_api` (the Batch REST
subset and /healthz), `server` (the process).
"""
