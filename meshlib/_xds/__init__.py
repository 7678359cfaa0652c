"""Consume xDS from a control plane (Istio, any go-control-plane server) as gRPC's proxyless clients do.

bootstrap.py (where the server is, who this node is) → client.py (the ADS
stream, ACK/NACK, reconnects) → manager.py (the accepted state, what to
subscribe to next, the gate first requests wait at) → validate.py (the
protos' validation rules) and translate.py (resources → meshlib config) →
merge.py (beside the file's config) → the mesh compiles a snapshot as for
any other config. Needs the ``xds`` extra (grpcio, xds-protos).
"""
