"""sslscale."""
