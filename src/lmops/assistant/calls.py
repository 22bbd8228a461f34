"""The request records' endpoints of the assistant's inner calls (``serving/inner_calls.py`` settles them)."""

FUNCTION_ENDPOINT = "assistant.function"  # request records of the function model's calls
ANSWER_ENDPOINT = "assistant.answer"  # ... and of the default model's
