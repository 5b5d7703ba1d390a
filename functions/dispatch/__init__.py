"""Starting work: admission (how many requests run), the workflow executions, the Cloud Batch job
bodies built from the stage registry, `request.json`, and the calls that stop a Batch job."""
