"""Image generation: /v1/images/generations through the router, images stored by lmops and served at signed URLs."""
