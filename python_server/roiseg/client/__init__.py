"""Clients of the server (gRPC or in-process) and the requests the command line sends."""
