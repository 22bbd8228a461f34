"""The multi-service assistant (issue 23): tools the assistant's router calls (``tools/``)."""
