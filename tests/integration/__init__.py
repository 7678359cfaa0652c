"""End to end through the mesh to real uvicorn servers on 127.0.0.1."""
