"""Batch enrichment: files, OpenAI batches, enrichment jobs, the database queue, workers, workflows."""
