"""The gRPC server: the service (proto <-> engine job, errors <-> status), uploads, status
mapping."""
