"""What the API and the command line share: facilities, images, observations, imports, scenes, alerts, jobs and
API keys. Knows nothing of HTTP."""
