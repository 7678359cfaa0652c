"""One suite, four modes: the same scenarios in process and through ``meshlib proxy``, sync and async."""
