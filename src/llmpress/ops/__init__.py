"""Operating models in production: aliases (deploy / rollback), A/B tests with feedback statistics,
a response cache, and backup / restore of a whole llmpress home."""
