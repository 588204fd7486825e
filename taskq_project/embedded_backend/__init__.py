"""The PostgreSQL backend, for the embedded server: started on first connection."""
