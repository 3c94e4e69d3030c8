"""The roiseg.v1 gRPC contract, generated from protos/roiseg/v1 by `make proto`."""
