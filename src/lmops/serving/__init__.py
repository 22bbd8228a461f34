"""Serving logic behind the HTTP routes: validation done, this is where requests are carried out."""
