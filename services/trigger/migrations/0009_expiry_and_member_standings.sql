-- Issue 19: an earn rule's points may expire, and a business may block a member.
-- Runs with search_path = trigger.

-- Each rule version's expiry policy (at most one of the two is set, on earn
-- rules only): an accepted earn's points.requested.v1 event says when its
-- points expire.
ALTER TABLE rules
    ADD COLUMN points_expire_after_days integer,
    ADD COLUMN points_expire_at         timestamptz;

-- A request keeps when its points expire, so a request published again
-- (housekeeping's redrive) carries the same expires_at as the first time.
ALTER TABLE requests ADD COLUMN expires_at timestamptz;

-- Each member's standing, projected from members.lifecycle.v1: a blocked
-- member's triggers are refused (MEMBER_BLOCKED). The latest change wins, so a
-- replay of an older event changes nothing. Admission reads it in the statement
-- that reads the rule (ADMIT_TRIGGERS), by primary key.
CREATE TABLE member_standings (
    environment text        NOT NULL,
    org_id      text        NOT NULL,
    user_id     text        NOT NULL,
    blocked     boolean     NOT NULL,
    changed_at  timestamptz NOT NULL,
    PRIMARY KEY (environment, org_id, user_id)
);

-- As in 0008, with one more argument: when each request's points expire, kept
-- on its row. An overload: 0008's function stays for gateways of the previous
-- release during a rolling deploy (their requests expire nothing). Its body is
-- 0008's but for that column: a wrapper calling 0008's function and then
-- setting expires_at would write every such request row twice.
CREATE FUNCTION record_points_requests(
    p_client_ids text[], p_request_ids text[], p_transaction_ids uuid[], p_body_hashes text[],
    p_org_ids text[], p_environments text[], p_rule_ids text[], p_rule_versions integer[],
    p_user_ids text[], p_types text[], p_amounts bigint[],
    p_cap_maxes bigint[], p_cap_per_members bigint[],
    p_outbox_topics text[], p_outbox_keys text[], p_outbox_payloads bytea[],
    p_outbox_headers text[], p_callback_urls text[], p_correlation_ids text[],
    p_expires_ats timestamptz[]
) RETURNS TABLE (request_position integer, outcome text, transaction_id uuid, body_hash text)
LANGUAGE plpgsql AS $$
DECLARE
    i integer;
    recorded integer[] := '{}';
    saturated CONSTANT bigint := 4611686018427387904;
BEGIN
    FOR i IN
        SELECT n FROM generate_subscripts(p_client_ids, 1) AS n
        ORDER BY p_rule_ids[n], p_user_ids[n], n
    LOOP
        INSERT INTO requests (
            client_id, request_id, transaction_id, body_hash, org_id, environment,
            rule_id, rule_version, user_id, type, amount, cap_reserved, member_cap_reserved,
            callback_url, correlation_id, expires_at
        ) VALUES (
            p_client_ids[i], p_request_ids[i], p_transaction_ids[i], p_body_hashes[i],
            p_org_ids[i], p_environments[i], p_rule_ids[i], p_rule_versions[i],
            p_user_ids[i], p_types[i], p_amounts[i], p_amounts[i], p_amounts[i],
            p_callback_urls[i], p_correlation_ids[i], p_expires_ats[i]
        ) ON CONFLICT ON CONSTRAINT requests_pkey DO NOTHING;
        IF NOT FOUND THEN
            RETURN QUERY
                SELECT i, 'replayed', r.transaction_id, r.body_hash FROM requests AS r
                WHERE r.client_id = p_client_ids[i] AND r.request_id = p_request_ids[i];
            CONTINUE;
        END IF;

        IF p_cap_maxes[i] IS NOT NULL THEN
            -- Writes nothing when the amount would overshoot the cap.
            INSERT INTO cap_usage AS u (rule_id, used)
            SELECT p_rule_ids[i], p_amounts[i] WHERE p_amounts[i] <= p_cap_maxes[i]
            ON CONFLICT (rule_id) DO UPDATE SET used = u.used + EXCLUDED.used
            WHERE u.used + EXCLUDED.used <= p_cap_maxes[i];
            IF NOT FOUND THEN
                DELETE FROM requests
                WHERE client_id = p_client_ids[i] AND request_id = p_request_ids[i];
                RETURN QUERY SELECT i, 'CAP_EXCEEDED', NULL::uuid, NULL::text;
                CONTINUE;
            END IF;
        END IF;
        IF p_cap_per_members[i] IS NOT NULL THEN
            INSERT INTO member_cap_usage AS u (rule_id, user_id, used)
            SELECT p_rule_ids[i], p_user_ids[i], p_amounts[i]
            WHERE p_amounts[i] <= p_cap_per_members[i]
            ON CONFLICT (rule_id, user_id) DO UPDATE SET used = u.used + EXCLUDED.used
            WHERE u.used + EXCLUDED.used <= p_cap_per_members[i];
        END IF;
        IF p_cap_per_members[i] IS NOT NULL AND NOT FOUND THEN
            IF p_cap_maxes[i] IS NOT NULL THEN
                UPDATE cap_usage SET used = used - p_amounts[i] WHERE rule_id = p_rule_ids[i];
            END IF;
            DELETE FROM requests
            WHERE client_id = p_client_ids[i] AND request_id = p_request_ids[i];
            RETURN QUERY SELECT i, 'MEMBER_CAP_EXCEEDED', NULL::uuid, NULL::text;
            CONTINUE;
        END IF;

        recorded := recorded || i;
        RETURN QUERY SELECT i, 'recorded', p_transaction_ids[i], p_body_hashes[i];
    END LOOP;

    -- What the triggers without a cap reserve, for the batch at once.
    INSERT INTO cap_usage AS u (rule_id, used)
    SELECT p_rule_ids[n], least(sum(p_amounts[n]), saturated)
    FROM unnest(recorded) AS n WHERE p_cap_maxes[n] IS NULL
    GROUP BY p_rule_ids[n] ORDER BY p_rule_ids[n]
    ON CONFLICT (rule_id) DO UPDATE SET used = least(u.used + EXCLUDED.used, saturated);
    INSERT INTO member_cap_usage AS u (rule_id, user_id, used)
    SELECT p_rule_ids[n], p_user_ids[n], least(sum(p_amounts[n]), saturated)
    FROM unnest(recorded) AS n WHERE p_cap_per_members[n] IS NULL
    GROUP BY p_rule_ids[n], p_user_ids[n] ORDER BY p_rule_ids[n], p_user_ids[n]
    ON CONFLICT (rule_id, user_id) DO UPDATE SET used = least(u.used + EXCLUDED.used, saturated);

    -- One insert for the batch, in acceptance order (the relay publishes in id order).
    INSERT INTO outbox (topic, key, payload, headers)
    SELECT p_outbox_topics[n], p_outbox_keys[n], p_outbox_payloads[n], p_outbox_headers[n]::jsonb
    FROM unnest(recorded) AS n
    ORDER BY n;
END;
$$;
