"""Webhook delivery: when a job ends, POST the dialect's payload to the request's `webhook` URL.

payloads.py  - the per-dialect payload hook (the dialect renders; this package never knows vendors)
signing.py   - delivery id, timestamp and HMAC-SHA256 signature headers (Standard Webhooks layout)
dispatcher.py - the loop that finds finished jobs, renders, sends and retries with backoff
"""
