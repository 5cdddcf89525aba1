"""The HTTPS web monitor: users, certificates, pages and the API."""
