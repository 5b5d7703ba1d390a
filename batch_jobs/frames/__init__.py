"""The frames stage: frames from a video or photos from a folder, scored and selected."""
