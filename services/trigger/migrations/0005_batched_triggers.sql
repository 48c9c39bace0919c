-- Triggers are admitted and recorded in batches: every request waiting while
-- the gateway's earlier batches are in flight goes in the next one, so under
-- load many triggers share one statement and one commit. Each request in a
-- batch still gets its own outcome. Runs with search_path = trigger.
--
-- record_points_request (0004) stays for gateways of the previous release
-- during a rolling deploy; nothing in this release calls it.

-- How many tokens the last statement took from the bucket (a batch may ask for
-- several); `granted` is kept for the previous release's single-token statement.
ALTER TABLE rate_limit_buckets ADD COLUMN taken integer NOT NULL DEFAULT 0;

-- Records a batch of accepted triggers: for each one, the idempotency record,
-- its cap reservations and the outbox row of points.requested.v1. The arrays
-- are parallel, one element a trigger. Returns, for each position (1-based):
--   ('recorded', the new transaction id, the body hash);
--   ('replayed', the earlier request's transaction id and body hash) when the
--     requestId was recorded first by a concurrent request;
--   ('CAP_EXCEEDED' | 'MEMBER_CAP_EXCEEDED', null, null) when the amount would
--     overshoot a cap: nothing of that trigger is recorded or reserved.
--
-- Triggers are taken in (rule, member) order, so the cap rows of a batch are
-- locked in one global order and two batches never wait on each other's rows
-- in opposite orders. The reservations are conditional UPDATEs: the row lock
-- serialises reservations on one rule (or member), so the check and the
-- increment are one atomic step however many gateway replicas run.
CREATE FUNCTION record_points_requests(
    p_client_ids text[], p_request_ids text[], p_transaction_ids uuid[], p_body_hashes text[],
    p_org_ids text[], p_environments text[], p_rule_ids text[], p_rule_versions integer[],
    p_user_ids text[], p_types text[], p_amounts bigint[],
    p_cap_maxes bigint[], p_cap_per_members bigint[],
    p_outbox_topics text[], p_outbox_keys text[], p_outbox_payloads bytea[],
    p_outbox_headers text[]
) RETURNS TABLE (request_position integer, outcome text, transaction_id uuid, body_hash text)
LANGUAGE plpgsql AS $$
DECLARE
    i integer;
    recorded integer[] := '{}';
BEGIN
    FOR i IN
        SELECT n FROM generate_subscripts(p_client_ids, 1) AS n
        ORDER BY p_rule_ids[n], p_user_ids[n], n
    LOOP
        INSERT INTO requests (
            client_id, request_id, transaction_id, body_hash, org_id, environment,
            rule_id, rule_version, user_id, type, amount, cap_reserved, member_cap_reserved
        ) VALUES (
            p_client_ids[i], p_request_ids[i], p_transaction_ids[i], p_body_hashes[i],
            p_org_ids[i], p_environments[i], p_rule_ids[i], p_rule_versions[i],
            p_user_ids[i], p_types[i], p_amounts[i],
            CASE WHEN p_cap_maxes[i] IS NULL THEN 0 ELSE p_amounts[i] END,
            CASE WHEN p_cap_per_members[i] IS NULL THEN 0 ELSE p_amounts[i] END
        ) ON CONFLICT ON CONSTRAINT requests_pkey DO NOTHING;
        IF NOT FOUND THEN
            RETURN QUERY
                SELECT i, 'replayed', r.transaction_id, r.body_hash FROM requests AS r
                WHERE r.client_id = p_client_ids[i] AND r.request_id = p_request_ids[i];
            CONTINUE;
        END IF;

        IF p_cap_maxes[i] IS NOT NULL THEN
            INSERT INTO cap_usage (rule_id, used) VALUES (p_rule_ids[i], 0)
            ON CONFLICT DO NOTHING;
            UPDATE cap_usage SET used = used + p_amounts[i]
            WHERE rule_id = p_rule_ids[i] AND used + p_amounts[i] <= p_cap_maxes[i];
            IF NOT FOUND THEN
                DELETE FROM requests
                WHERE client_id = p_client_ids[i] AND request_id = p_request_ids[i];
                RETURN QUERY SELECT i, 'CAP_EXCEEDED', NULL::uuid, NULL::text;
                CONTINUE;
            END IF;
        END IF;
        IF p_cap_per_members[i] IS NOT NULL THEN
            INSERT INTO member_cap_usage (rule_id, user_id, used)
            VALUES (p_rule_ids[i], p_user_ids[i], 0)
            ON CONFLICT DO NOTHING;
            UPDATE member_cap_usage SET used = used + p_amounts[i]
            WHERE rule_id = p_rule_ids[i] AND user_id = p_user_ids[i]
                AND used + p_amounts[i] <= p_cap_per_members[i];
            IF NOT FOUND THEN
                IF p_cap_maxes[i] IS NOT NULL THEN
                    UPDATE cap_usage SET used = used - p_amounts[i] WHERE rule_id = p_rule_ids[i];
                END IF;
                DELETE FROM requests
                WHERE client_id = p_client_ids[i] AND request_id = p_request_ids[i];
                RETURN QUERY SELECT i, 'MEMBER_CAP_EXCEEDED', NULL::uuid, NULL::text;
                CONTINUE;
            END IF;
        END IF;

        recorded := recorded || i;
        RETURN QUERY SELECT i, 'recorded', p_transaction_ids[i], p_body_hashes[i];
    END LOOP;

    -- One insert for the batch, in acceptance order (the relay publishes in id order).
    INSERT INTO outbox (topic, key, payload, headers)
    SELECT p_outbox_topics[n], p_outbox_keys[n], p_outbox_payloads[n], p_outbox_headers[n]::jsonb
    FROM unnest(recorded) AS n
    ORDER BY n;
END;
$$;
