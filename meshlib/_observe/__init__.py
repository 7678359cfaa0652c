"""Observation: what happened to each request, told to the observers a config turns on.

The engine and the front doors fill one :class:`Exchange` per request (and a
:class:`Try` per try) and tell an :class:`Observers` set at its start, at
each try's start and end, and once at its end (the response body closed, or
the request failed). Tracing, metrics and the access log are observers; a
snapshot with none of them configured carries no observers, and requests pay
one ``is None`` test.
"""
