"""diffserve's own job API (/v1/jobs): the canonical request in, jobs of every dialect out, live events."""
