"""Generated gRPC/protobuf contracts (scripts/gen_protos.py)."""
