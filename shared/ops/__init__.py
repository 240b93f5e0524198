"""Operations: housekeeping under a lease, retention, monitoring queries, operator accounts."""
