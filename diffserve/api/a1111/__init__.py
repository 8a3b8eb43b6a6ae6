"""The AUTOMATIC1111 web UI API (/sdapi/v1) on diffserve's models."""
