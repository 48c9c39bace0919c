-- Records an accepted trigger in one statement, so accepting costs the
-- gateway one round trip and one commit instead of a transaction of eight:
-- the idempotency record, the cap reservations and the outbox row of
-- points.requested.v1 commit together or not at all. The gateway checks the
-- rule before calling this; the function only does what needs the rows.
--
-- Returns ('recorded', the new transaction id, the body hash) or, when the
-- requestId was recorded first by a concurrent request, ('replayed', that
-- request's transaction id and body hash). A cap that the amount would
-- overshoot raises CAP_EXCEEDED or MEMBER_CAP_EXCEEDED, which rolls the whole
-- statement back: nothing is recorded or reserved.
--
-- The reservations are conditional UPDATEs: the row lock serialises concurrent
-- reservations on one rule (or member), so the check and the increment are one
-- atomic step however many gateway replicas run. Runs with search_path = trigger.

CREATE FUNCTION record_points_request(
    p_client_id text, p_request_id text, p_transaction_id uuid, p_body_hash text,
    p_org_id text, p_environment text, p_rule_id text, p_rule_version integer,
    p_user_id text, p_type text, p_amount bigint,
    p_cap_max bigint, p_cap_per_member bigint,
    p_outbox_topic text, p_outbox_key text, p_outbox_payload bytea, p_outbox_headers text
) RETURNS TABLE (outcome text, transaction_id uuid, body_hash text)
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO requests (
        client_id, request_id, transaction_id, body_hash, org_id, environment,
        rule_id, rule_version, user_id, type, amount, cap_reserved, member_cap_reserved
    ) VALUES (
        p_client_id, p_request_id, p_transaction_id, p_body_hash, p_org_id, p_environment,
        p_rule_id, p_rule_version, p_user_id, p_type, p_amount,
        CASE WHEN p_cap_max IS NULL THEN 0 ELSE p_amount END,
        CASE WHEN p_cap_per_member IS NULL THEN 0 ELSE p_amount END
    ) ON CONFLICT ON CONSTRAINT requests_pkey DO NOTHING;
    IF NOT FOUND THEN
        RETURN QUERY
            SELECT 'replayed', r.transaction_id, r.body_hash FROM requests AS r
            WHERE r.client_id = p_client_id AND r.request_id = p_request_id;
        RETURN;
    END IF;

    IF p_cap_max IS NOT NULL THEN
        INSERT INTO cap_usage (rule_id, used) VALUES (p_rule_id, 0) ON CONFLICT DO NOTHING;
        UPDATE cap_usage SET used = used + p_amount
        WHERE rule_id = p_rule_id AND used + p_amount <= p_cap_max;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'CAP_EXCEEDED';
        END IF;
    END IF;
    IF p_cap_per_member IS NOT NULL THEN
        INSERT INTO member_cap_usage (rule_id, user_id, used) VALUES (p_rule_id, p_user_id, 0)
        ON CONFLICT DO NOTHING;
        UPDATE member_cap_usage SET used = used + p_amount
        WHERE rule_id = p_rule_id AND user_id = p_user_id AND used + p_amount <= p_cap_per_member;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'MEMBER_CAP_EXCEEDED';
        END IF;
    END IF;

    INSERT INTO outbox (topic, key, payload, headers)
    VALUES (p_outbox_topic, p_outbox_key, p_outbox_payload, p_outbox_headers::jsonb);
    RETURN QUERY SELECT 'recorded', p_transaction_id, p_body_hash;
END;
$$;
