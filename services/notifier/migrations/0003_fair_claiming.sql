-- Fair claiming picks each organisation's oldest due delivery of one kind
-- (DISTINCT ON org_id); this index hands them over in that order without a sort.
CREATE INDEX deliveries_due_by_organisation
    ON deliveries (kind, org_id, next_attempt_at)
    WHERE status = 'pending';
