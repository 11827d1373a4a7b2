"""The server's endpoints, one router per concern: `openai` (the OpenAI API) and `system` (health,
readiness, metrics, the seeds' /generate)."""
