"""A request's status: the one builder of the status document (view), its Firestore mirror, and
the links to its outputs."""
