"""What a caller does with a request once made: find it (access), cancel, restart and delete it
(control), download its results (downloads), upload files for it (uploads)."""
