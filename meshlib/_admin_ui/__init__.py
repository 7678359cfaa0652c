"""The live admin page: one HTML page (static assets in ``static/``) polling a JSON state, served by the sidecar's
admin listener and, in process, by :meth:`meshlib.Mesh.admin_asgi_app`."""
