"""Chat: the API a web chat UI uses: sign-in, conversations, messages streamed from the models, export, import."""
