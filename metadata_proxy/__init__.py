"""metadata-proxy: serve an assumed IAM role to unmodified AWS clients through a local IMDSv2 endpoint."""

__version__ = "0.1.0"
